//! Resource sets: CPU, GPU, memory (bytes) and any custom name, in fixed
//! point with 1/10000 precision, so that adding and releasing fractions never
//! drifts.
//!
//! The well-known names are folded to lowercase (`CPU`, `num_gpus`,
//! `Memory`, `nvidia.com/gpu`...); custom names are kept as written and are
//! case-sensitive.
//! Quantities parse from plain numbers (`1`, `0.5`) and, for every resource,
//! Kubernetes-style suffixes (`500m`, `256Mi`, `2G`).

use std::collections::BTreeMap;
use std::fmt;

use shoal_proto::v1 as pb;
use thiserror::Error;

/// Fixed-point units per whole unit of a resource.
pub const UNIT: i64 = 10_000;

/// The CPU resource name.
pub const CPU: &str = "cpu";
/// The GPU resource name.
pub const GPU: &str = "gpu";
/// The memory resource name (bytes).
pub const MEMORY: &str = "memory";

/// A resource amount that could not be read.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ResourceError {
    /// Not a number or quantity.
    #[error("resource `{name}`: `{value}` is not a quantity (examples: 1, 0.5, 500m, 256Mi, 2G)")]
    Malformed {
        /// Resource name.
        name: String,
        /// Offending text.
        value: String,
    },
    /// Below zero.
    #[error("resource `{name}`: amount {value} is negative")]
    Negative {
        /// Resource name.
        name: String,
        /// Offending text.
        value: String,
    },
    /// Too large to represent.
    #[error("resource `{name}`: amount {value} is too large")]
    TooLarge {
        /// Resource name.
        name: String,
        /// Offending text.
        value: String,
    },
    /// Empty or otherwise unusable name.
    #[error("resource name `{0}` is invalid: use letters, digits, `.`, `/`, `-` or `_`")]
    BadName(String),
    /// A `NAME=AMOUNT` item without `=`.
    #[error("`{0}` is not NAME=AMOUNT")]
    NotPair(String),
}

/// Folds the well-known names to their canonical lowercase form.
pub fn canonical_name(name: &str) -> Result<String, ResourceError> {
    let n = name.trim();
    let valid = !n.is_empty()
        && n.len() <= 253
        && n.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '/' | '-' | '_'));
    if !valid {
        return Err(ResourceError::BadName(name.to_string()));
    }
    let lower = n.to_ascii_lowercase();
    Ok(match lower.as_str() {
        "cpu" | "cpus" | "num_cpus" => CPU.to_string(),
        "gpu" | "gpus" | "num_gpus" | "nvidia.com/gpu" => GPU.to_string(),
        "memory" | "mem" => MEMORY.to_string(),
        _ => n.to_string(),
    })
}

/// Parses a quantity like `1`, `0.25`, `500m`, `256Mi`, `1.5G` into fixed-point units.
pub fn parse_quantity(name: &str, text: &str) -> Result<i64, ResourceError> {
    let t = text.trim();
    let malformed = || ResourceError::Malformed { name: name.to_string(), value: text.to_string() };
    if t.starts_with('-') {
        return Err(ResourceError::Negative { name: name.to_string(), value: text.to_string() });
    }
    let (num, mult): (&str, f64) = {
        const SUFFIXES: [(&str, f64); 13] = [
            ("Ki", 1024.0),
            ("Mi", 1048576.0),
            ("Gi", 1073741824.0),
            ("Ti", 1099511627776.0),
            ("Pi", 1125899906842624.0),
            ("k", 1e3),
            ("K", 1e3),
            ("M", 1e6),
            ("G", 1e9),
            ("T", 1e12),
            ("P", 1e15),
            ("m", 1e-3),
            ("", 1.0),
        ];
        let mut found = (t, 1.0);
        for (s, m) in SUFFIXES {
            if !s.is_empty() && t.ends_with(s) {
                found = (&t[..t.len() - s.len()], m);
                break;
            }
        }
        found
    };
    if num.is_empty() || !num.chars().all(|c| c.is_ascii_digit() || c == '.' || c == 'e' || c == 'E' || c == '+') {
        return Err(malformed());
    }
    let v: f64 = num.parse().map_err(|_| malformed())?;
    amount_to_units(name, v * mult, text)
}

fn amount_to_units(name: &str, v: f64, text: &str) -> Result<i64, ResourceError> {
    if !v.is_finite() {
        return Err(ResourceError::Malformed { name: name.to_string(), value: text.to_string() });
    }
    if v < 0.0 {
        return Err(ResourceError::Negative { name: name.to_string(), value: text.to_string() });
    }
    let units = (v * UNIT as f64).round();
    if units >= (i64::MAX / 4) as f64 {
        return Err(ResourceError::TooLarge { name: name.to_string(), value: text.to_string() });
    }
    Ok(units as i64)
}

/// Largest amount written as a plain number (the REST API's documented
/// bound; larger amounts take a suffix, e.g. `20000Gi`).
pub const MAX_NUMBER_AMOUNT: f64 = 1.0e13;

/// Reads a JSON number or string quantity.
pub fn parse_json_quantity(name: &str, v: &serde_json::Value) -> Result<i64, ResourceError> {
    match v {
        serde_json::Value::Number(n) => {
            let f = n.as_f64().unwrap_or(f64::NAN);
            if f > MAX_NUMBER_AMOUNT {
                return Err(ResourceError::TooLarge { name: name.to_string(), value: n.to_string() });
            }
            amount_to_units(name, f, &n.to_string())
        }
        serde_json::Value::String(s) => parse_quantity(name, s),
        other => Err(ResourceError::Malformed { name: name.to_string(), value: other.to_string() }),
    }
}

/// An amount of each named resource, in fixed-point units. Absent names are zero.
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ResourceSet {
    amounts: BTreeMap<String, i64>,
}

impl ResourceSet {
    /// The empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `name` to `units` fixed-point units (zero removes it).
    pub fn set_units(&mut self, name: &str, units: i64) {
        if units == 0 {
            self.amounts.remove(name);
        } else {
            self.amounts.insert(name.to_string(), units);
        }
    }

    /// Builder form of [`set_units`](Self::set_units) taking whole units.
    pub fn with(mut self, name: &str, amount: f64) -> Self {
        self.set_units(name, (amount * UNIT as f64).round() as i64);
        self
    }

    /// The amount of `name` in fixed-point units.
    pub fn units(&self, name: &str) -> i64 {
        self.amounts.get(name).copied().unwrap_or(0)
    }

    /// The amount of `name` in whole units.
    pub fn get(&self, name: &str) -> f64 {
        self.units(name) as f64 / UNIT as f64
    }

    /// Whether no resource is named.
    pub fn is_empty(&self) -> bool {
        self.amounts.is_empty()
    }

    /// Each resource name with its fixed-point amount.
    pub fn iter(&self) -> impl Iterator<Item = (&str, i64)> {
        self.amounts.iter().map(|(k, v)| (k.as_str(), *v))
    }

    /// Whether every amount in `req` fits within `self`.
    pub fn contains(&self, req: &ResourceSet) -> bool {
        req.amounts.iter().all(|(k, v)| self.units(k) >= *v)
    }

    /// Subtracts `req` (amounts may go negative while a blocked worker's CPU is re-taken).
    pub fn subtract(&mut self, req: &ResourceSet) {
        for (k, v) in &req.amounts {
            *self.amounts.entry(k.clone()).or_insert(0) -= v;
        }
    }

    /// Adds `req` back.
    pub fn add(&mut self, req: &ResourceSet) {
        for (k, v) in &req.amounts {
            *self.amounts.entry(k.clone()).or_insert(0) += v;
        }
    }

    /// Adds `req`, never above `cap`.
    pub fn add_capped(&mut self, req: &ResourceSet, cap: &ResourceSet) {
        for (k, v) in &req.amounts {
            let e = self.amounts.entry(k.clone()).or_insert(0);
            *e = (*e + v).min(cap.units(k));
        }
    }

    /// Parses `NAME=AMOUNT,NAME=AMOUNT` (the raylet's `--resources` flag).
    pub fn parse_pairs(text: &str) -> Result<Self, ResourceError> {
        let mut set = ResourceSet::new();
        for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (name, amount) = item.split_once('=').ok_or_else(|| ResourceError::NotPair(item.to_string()))?;
            let name = canonical_name(name)?;
            let units = parse_quantity(&name, amount)?;
            set.set_units(&name, units);
        }
        Ok(set)
    }

    /// Reads a map of names to JSON quantities (a job spec's `resources`).
    pub fn from_json_map(map: &serde_json::Map<String, serde_json::Value>) -> Result<Self, ResourceError> {
        let mut set = ResourceSet::new();
        for (name, v) in map {
            let name = canonical_name(name)?;
            set.set_units(&name, parse_json_quantity(&name, v)?);
        }
        Ok(set)
    }

    /// The utilisation that placing `req` would bring this node to: the
    /// highest share, over the resources `req` asks for, of `total` in use.
    pub fn utilisation_after(total: &ResourceSet, available: &ResourceSet, req: &ResourceSet) -> f64 {
        let mut worst: f64 = 0.0;
        let mut any = false;
        for (k, t) in total.iter() {
            if t <= 0 {
                continue;
            }
            let r = req.units(k);
            if r == 0 && k != CPU {
                continue;
            }
            any = true;
            let used = t - available.units(k) + r;
            worst = worst.max(used as f64 / t as f64);
        }
        if any {
            worst
        } else {
            0.0
        }
    }
}

impl fmt::Debug for ResourceSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for ResourceSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{{")?;
        for (i, (k, v)) in self.amounts.iter().enumerate() {
            if i > 0 {
                write!(f, ", ")?;
            }
            if k == MEMORY {
                let sign = if *v < 0 { "-" } else { "" };
                write!(f, "{k}: {sign}{}", human_bytes((*v / UNIT).unsigned_abs()))?;
            } else {
                let whole = *v as f64 / UNIT as f64;
                write!(f, "{k}: {whole}")?;
            }
        }
        write!(f, "}}")
    }
}

/// Formats a byte count with a binary suffix (`256 MiB`).
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

impl From<&ResourceSet> for pb::ResourceSet {
    fn from(r: &ResourceSet) -> Self {
        pb::ResourceSet { amounts: r.amounts.iter().map(|(k, v)| (k.clone(), *v)).collect() }
    }
}

impl From<&pb::ResourceSet> for ResourceSet {
    fn from(r: &pb::ResourceSet) -> Self {
        ResourceSet { amounts: r.amounts.iter().filter(|(_, v)| **v != 0).map(|(k, v)| (k.clone(), *v)).collect() }
    }
}

impl From<Option<&pb::ResourceSet>> for ResourceSet {
    fn from(r: Option<&pb::ResourceSet>) -> Self {
        r.map(ResourceSet::from).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_parse_with_kubernetes_suffixes() {
        assert_eq!(parse_quantity("cpu", "1").unwrap(), UNIT);
        assert_eq!(parse_quantity("cpu", "0.5").unwrap(), UNIT / 2);
        assert_eq!(parse_quantity("cpu", "500m").unwrap(), UNIT / 2);
        assert_eq!(parse_quantity("memory", "256Mi").unwrap(), 256 * 1024 * 1024 * UNIT);
        assert_eq!(parse_quantity("memory", "2G").unwrap(), 2_000_000_000 * UNIT);
        assert!(matches!(parse_quantity("cpu", "-1"), Err(ResourceError::Negative { .. })));
        assert!(matches!(parse_quantity("cpu", "lots"), Err(ResourceError::Malformed { .. })));
        assert!(matches!(parse_quantity("cpu", ""), Err(ResourceError::Malformed { .. })));
        assert!(parse_json_quantity("cpu", &serde_json::json!(-2)).is_err());
        assert!(parse_json_quantity("cpu", &serde_json::json!([1])).is_err());
    }

    #[test]
    fn sets_fit_subtract_and_add() {
        let total = ResourceSet::parse_pairs("CPU=2,memory=1Gi,tpu=4").unwrap();
        assert_eq!(total.get(CPU), 2.0);
        let req = ResourceSet::new().with(CPU, 1.5);
        assert!(total.contains(&req));
        let mut avail = total.clone();
        avail.subtract(&req);
        assert!(!avail.contains(&req));
        avail.add(&req);
        assert_eq!(avail, total);
        assert!(ResourceSet::parse_pairs("cpu").is_err());
        assert!(ResourceSet::parse_pairs("bad name=1").is_err());
    }

    #[test]
    fn utilisation_counts_the_request() {
        let total = ResourceSet::new().with(CPU, 4.0);
        let avail = ResourceSet::new().with(CPU, 3.0);
        let req = ResourceSet::new().with(CPU, 1.0);
        assert_eq!(ResourceSet::utilisation_after(&total, &avail, &req), 0.5);
    }
}
