//! The resource ledger: what this node has, what its leases hold, and which
//! GPU ids each lease may use.
//!
//! Every amount is in fixed-point units ([`UNIT`] per whole). GPUs are
//! accounted per device: a request for whole GPUs takes that many devices
//! that nobody else uses, exclusively; a request for a fraction of one GPU
//! shares a device with other fractional leases as long as their fractions
//! on it add up to at most one whole GPU, packed onto the fullest device
//! that still fits (so whole devices stay free for whole-GPU tasks).
//!
//! Invariants: `available.units(gpu)` is the sum of the devices' free units;
//! a device held by a whole-GPU lease has no free units; ids are never lent
//! to two leases unless both are fractional.
//!
//! A worker blocked in a nested `get` lends out its lease's CPUs (and only
//! them: its GPU memory stays in use) until it unblocks.

use crate::resources::{ResourceSet, CPU, GPU, UNIT};

/// What one lease holds: its resource shape and the GPU units it took on
/// each device.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Grant {
    /// Device id and the units taken on it.
    pub gpus: Vec<(u32, i64)>,
}

impl Grant {
    /// The GPU ids the lease's tasks see (`CUDA_VISIBLE_DEVICES`).
    pub(crate) fn gpu_ids(&self) -> Vec<u32> {
        self.gpus.iter().map(|(id, _)| *id).collect()
    }
}

/// The node's resources and their holders.
#[derive(Debug)]
pub(crate) struct ResourceLedger {
    total: ResourceSet,
    available: ResourceSet,
    /// Free units of each GPU device, by id.
    gpu_free: Vec<i64>,
}

impl ResourceLedger {
    /// A ledger of a node offering `total`; GPUs count as whole devices
    /// (a fractional total is rounded down).
    pub(crate) fn new(total: ResourceSet) -> Self {
        let devices = (total.units(GPU) / UNIT).max(0) as usize;
        let mut total = total;
        if devices as i64 * UNIT != total.units(GPU) {
            total.set_units(GPU, devices as i64 * UNIT);
        }
        ResourceLedger { available: total.clone(), total, gpu_free: vec![UNIT; devices] }
    }

    pub(crate) fn total(&self) -> &ResourceSet {
        &self.total
    }

    pub(crate) fn available(&self) -> &ResourceSet {
        &self.available
    }

    /// Whether `class` could ever fit on this node.
    pub(crate) fn feasible(&self, class: &ResourceSet) -> bool {
        self.total.contains(class) && self.gpu_plan(class, true).is_some()
    }

    /// Whether `class` fits now.
    pub(crate) fn fits(&self, class: &ResourceSet) -> bool {
        self.available.contains(class) && self.gpu_plan(class, false).is_some()
    }

    /// The devices a new lease of `class` would take: `(id, units)` each.
    /// `empty` plans against an idle node (for feasibility).
    fn gpu_plan(&self, class: &ResourceSet, empty: bool) -> Option<Vec<(u32, i64)>> {
        let units = class.units(GPU);
        if units <= 0 {
            return Some(Vec::new());
        }
        let free = |i: usize| if empty { UNIT } else { self.gpu_free[i] };
        if units < UNIT {
            // Best fit: the device with the least room that still fits.
            let best = (0..self.gpu_free.len()).filter(|&i| free(i) >= units).min_by_key(|&i| (free(i), i))?;
            return Some(vec![(best as u32, units)]);
        }
        // Whole devices, exclusively; a request like 1.5 takes two.
        let whole = ((units + UNIT - 1) / UNIT) as usize;
        let ids: Vec<(u32, i64)> =
            (0..self.gpu_free.len()).filter(|&i| free(i) == UNIT).take(whole).map(|i| (i as u32, UNIT)).collect();
        (ids.len() == whole).then_some(ids)
    }

    /// Takes `class` for a new lease, or `None` when it does not fit now.
    pub(crate) fn acquire(&mut self, class: &ResourceSet) -> Option<Grant> {
        if !self.available.contains(class) {
            return None;
        }
        let gpus = self.gpu_plan(class, false)?;
        let mut charged = class.clone();
        let gpu_units: i64 = gpus.iter().map(|(_, u)| *u).sum();
        charged.set_units(GPU, gpu_units);
        for (id, u) in &gpus {
            self.gpu_free[*id as usize] -= u;
        }
        self.available.subtract(&charged);
        Some(Grant { gpus })
    }

    /// Gives back what a lease of `class` took with `grant`.
    pub(crate) fn release(&mut self, class: &ResourceSet, grant: &Grant) {
        let mut charged = class.clone();
        charged.set_units(GPU, grant.gpus.iter().map(|(_, u)| *u).sum());
        for (id, u) in &grant.gpus {
            if let Some(f) = self.gpu_free.get_mut(*id as usize) {
                *f = (*f + u).min(UNIT);
            }
        }
        self.available.add_capped(&charged, &self.total);
    }

    /// A blocked worker lends its lease's CPUs out.
    pub(crate) fn lend(&mut self, class: &ResourceSet) {
        self.available.add(&cpus_of(class));
    }

    /// The blocked worker runs again and takes its CPUs back (the amount
    /// may go below zero until a lease that used them ends).
    pub(crate) fn reclaim(&mut self, class: &ResourceSet) {
        self.available.subtract(&cpus_of(class));
    }
}

fn cpus_of(class: &ResourceSet) -> ResourceSet {
    let mut c = ResourceSet::new();
    c.set_units(CPU, class.units(CPU));
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpus(n: f64) -> ResourceSet {
        ResourceSet::new().with(GPU, n)
    }

    #[test]
    fn a_fraction_and_two_whole_gpus_never_share_a_device() {
        let mut l = ResourceLedger::new(ResourceSet::new().with(CPU, 4.0).with(GPU, 2.0));
        let half = l.acquire(&gpus(0.5)).expect("half fits");
        assert_eq!(half.gpu_ids(), [0]);
        let one = l.acquire(&gpus(1.0)).expect("one whole GPU is free");
        assert_eq!(one.gpu_ids(), [1], "the whole GPU must not be the shared device");
        assert!(l.acquire(&gpus(1.0)).is_none(), "no whole device is left");
        assert!(!l.fits(&gpus(1.0)));
        l.release(&gpus(0.5), &half);
        let again = l.acquire(&gpus(1.0)).expect("device 0 is whole again");
        assert_eq!(again.gpu_ids(), [0]);
        assert_eq!(l.available().units(GPU), 0);
    }

    #[test]
    fn fractions_pack_onto_one_device_up_to_a_whole() {
        let mut l = ResourceLedger::new(gpus(2.0));
        let a = l.acquire(&gpus(0.5)).unwrap();
        let b = l.acquire(&gpus(0.25)).unwrap();
        let c = l.acquire(&gpus(0.25)).unwrap();
        assert_eq!((a.gpu_ids(), b.gpu_ids(), c.gpu_ids()), (vec![0], vec![0], vec![0]));
        let d = l.acquire(&gpus(0.5)).unwrap();
        assert_eq!(d.gpu_ids(), [1], "device 0 is full");
        assert!(l.acquire(&gpus(0.75)).is_none(), "0.5 left on device 1 only");
        for (g, x) in [(&a, 0.5), (&b, 0.25), (&c, 0.25), (&d, 0.5)] {
            l.release(&gpus(x), g);
        }
        assert_eq!(l.available(), l.total());
    }

    #[test]
    fn a_non_integer_request_above_one_takes_whole_devices() {
        let mut l = ResourceLedger::new(gpus(2.0));
        assert!(l.feasible(&gpus(1.5)));
        let g = l.acquire(&gpus(1.5)).unwrap();
        assert_eq!(g.gpu_ids(), [0, 1]);
        assert!(l.acquire(&gpus(0.1)).is_none());
        l.release(&gpus(1.5), &g);
        assert_eq!(l.available(), l.total());
        assert!(!l.feasible(&gpus(3.0)));
    }

    #[test]
    fn blocked_workers_lend_only_their_cpus() {
        let class = ResourceSet::new().with(CPU, 1.0).with(GPU, 1.0);
        let mut l = ResourceLedger::new(ResourceSet::new().with(CPU, 1.0).with(GPU, 1.0));
        let g = l.acquire(&class).unwrap();
        l.lend(&class);
        assert_eq!(l.available().get(CPU), 1.0);
        assert_eq!(l.available().get(GPU), 0.0, "the GPU stays with the blocked lease");
        l.reclaim(&class);
        l.release(&class, &g);
        assert_eq!(l.available(), l.total());
    }
}
