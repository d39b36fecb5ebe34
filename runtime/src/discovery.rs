//! Finding the running local cluster without configuration.
//!
//! `shoal up` records the addresses of the cluster it started in one file
//! (mode 0600), [`record_path`]; the CLI's REST commands and
//! `Client::connect("auto")` look there when no address is given, the way
//! Ray's `address="auto"` finds the latest `ray start`. A record whose
//! process is gone is stale and ignored, so a cluster killed with SIGKILL
//! is never "found". The newest `shoal up` wins the file; when it stops it
//! removes the record only if the record is still its own.
//!
//! The record also holds the cluster's token (`crate::auth`): the file is
//! the user's alone (mode 0600, in a 0700 directory), and clients present
//! the token only to the addresses the record lists.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// Environment variable naming the directory of the record (default: the
/// user's runtime directory, else `/tmp/shoal-UID`).
pub const ENV_HOME: &str = "SHOAL_HOME";

/// What a running local cluster records.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ClusterRecord {
    /// GCS gRPC address.
    pub gcs: String,
    /// REST API base URL (`http://host:port`).
    pub api: String,
    /// Where drivers connect (the head's raylet).
    pub raylet: String,
    /// The process that started the cluster (`shoal up`).
    pub pid: u32,
    /// The cluster's session directory (logs).
    pub session_dir: String,
    /// Every raylet of the cluster (the head's too).
    #[serde(default)]
    pub raylets: Vec<String>,
    /// The cluster's token (`None`: authentication is off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

impl ClusterRecord {
    /// Every address of the cluster a client may present its token to.
    pub fn addresses(&self) -> Vec<String> {
        let mut a = vec![self.gcs.clone(), self.api.clone(), self.raylet.clone()];
        a.extend(self.raylets.iter().cloned());
        a
    }
}

/// The directory of shoal's per-user files.
pub fn home() -> PathBuf {
    if let Some(d) = std::env::var_os(ENV_HOME).filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("shoal");
    }
    // SAFETY: getuid(2) cannot fail.
    let uid = unsafe { libc::getuid() };
    std::env::temp_dir().join(format!("shoal-{uid}"))
}

/// Where the running cluster's record is.
pub fn record_path() -> PathBuf {
    home().join("cluster.json")
}

/// Records `rec` as the running cluster (atomically, mode 0600).
pub fn write(rec: &ClusterRecord) -> Result<PathBuf, Error> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let path = record_path();
    let dir = home();
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    let tmp = dir.join(format!(".cluster.json.{}", std::process::id()));
    let body = serde_json::to_vec_pretty(rec).map_err(|e| Error::Invalid(e.to_string()))?;
    let write = || -> std::io::Result<()> {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
        f.write_all(&body)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)
    };
    write().map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
    Ok(path)
}

/// The running cluster, if a live one is recorded.
pub fn find() -> Option<ClusterRecord> {
    let text = std::fs::read_to_string(record_path()).ok()?;
    let rec: ClusterRecord = serde_json::from_str(&text).ok()?;
    crate::process::is_running(rec.pid).then_some(rec)
}

/// Removes the record if it is the one process `pid` wrote.
pub fn remove_if_owned(pid: u32) {
    let path = record_path();
    let owned = std::fs::read_to_string(&path)
        .ok()
        .and_then(|t| serde_json::from_str::<ClusterRecord>(&t).ok())
        .is_some_and(|r| r.pid == pid);
    if owned {
        let _ = std::fs::remove_file(path);
    }
}

/// What to tell a user when no cluster can be found.
pub const HOW_TO_START: &str =
    "start one with `shoal up` in another terminal, or name a head with --address / SHOAL_API (the REST API) \
     or SHOAL_ADDRESS (a raylet)";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_of_a_live_process_is_found_and_a_stale_one_is_not() {
        let dir = std::env::temp_dir().join(format!("shoal-discovery-{}", fastrand::u64(..)));
        // Tests in this process share the environment: this is the only
        // test that sets SHOAL_HOME.
        std::env::set_var(ENV_HOME, &dir);
        assert_eq!(find(), None);
        let rec = ClusterRecord {
            gcs: "127.0.0.1:6379".into(),
            api: "http://127.0.0.1:8265".into(),
            raylet: "127.0.0.1:40000".into(),
            pid: std::process::id(),
            session_dir: "/tmp/x".into(),
            raylets: vec!["127.0.0.1:40001".into()],
            token: Some("t0ken".into()),
        };
        let path = write(&rec).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(find(), Some(rec.clone()));
        remove_if_owned(std::process::id() + 1);
        assert!(path.exists(), "another process's stop leaves the record");
        // A dead process's record is stale.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        write(&ClusterRecord { pid: dead, ..rec }).unwrap();
        assert_eq!(find(), None);
        remove_if_owned(dead);
        assert!(!path.exists());
        let _ = std::fs::remove_dir_all(&dir);
        std::env::remove_var(ENV_HOME);
    }
}
