//! Finding the cgroup v2 hierarchy and the BPF filesystem from /proc/mounts.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use nix::mount::{MsFlags, mount};

use super::DatapathError;

/// Where bpffs is mounted when it is missing.
const DEFAULT_BPFFS: &str = "/sys/fs/bpf";

/// (mount point, filesystem type) of every mount.
fn mounts() -> io::Result<Vec<(PathBuf, String)>> {
    let text = fs::read_to_string("/proc/mounts")?;
    Ok(text
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let _source = fields.next()?;
            let point = unescape(fields.next()?);
            let fstype = fields.next()?.to_owned();
            Some((PathBuf::from(point), fstype))
        })
        .collect())
}

/// /proc/mounts escapes space, tab, newline and backslash as octal.
fn unescape(field: &str) -> String {
    field
        .replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// The root of the cgroup v2 hierarchy (`/sys/fs/cgroup` on most nodes,
/// `/sys/fs/cgroup/unified` in hybrid set-ups).
pub fn cgroup2_root() -> Result<PathBuf, DatapathError> {
    mounts()
        .map_err(|source| DatapathError::Mounts { source })?
        .into_iter()
        .find(|(_, fstype)| fstype == "cgroup2")
        .map(|(point, _)| point)
        .ok_or(DatapathError::NoCgroup2)
}

/// Refuses a `--cgroup` that is not a cgroup v2 directory: the kernel would
/// only answer EBADF when the program is attached.
pub fn check_cgroup2(path: &Path) -> Result<(), DatapathError> {
    let fs = nix::sys::statfs::statfs(path).map_err(|errno| DatapathError::Cgroup {
        path: path.to_owned(),
        source: errno.into(),
    })?;
    if fs.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC {
        return Ok(());
    }
    Err(DatapathError::NotCgroup2 {
        path: path.to_owned(),
        root: cgroup2_root().ok(),
    })
}

/// Makes sure `pin_dir` sits on a bpffs mount (mounting one at /sys/fs/bpf if
/// none is there) and exists.
pub fn ensure_bpffs(pin_dir: &Path) -> Result<(), DatapathError> {
    let mounts = mounts().map_err(|source| DatapathError::Mounts { source })?;
    let on_bpffs = mounts
        .iter()
        .any(|(point, fstype)| fstype == "bpf" && pin_dir.starts_with(point));
    if !on_bpffs {
        if !pin_dir.starts_with(DEFAULT_BPFFS) {
            return Err(DatapathError::NotOnBpffs {
                pin_dir: pin_dir.to_owned(),
            });
        }
        fs::create_dir_all(DEFAULT_BPFFS).map_err(|source| DatapathError::Bpffs {
            path: DEFAULT_BPFFS.into(),
            source,
        })?;
        mount(
            Some("bpf"),
            DEFAULT_BPFFS,
            Some("bpf"),
            MsFlags::empty(),
            None::<&str>,
        )
        .map_err(|errno| DatapathError::Bpffs {
            path: DEFAULT_BPFFS.into(),
            source: errno.into(),
        })?;
        tracing::info!(path = DEFAULT_BPFFS, "mounted bpffs");
    }
    fs::create_dir_all(pin_dir).map_err(|source| DatapathError::Bpffs {
        path: pin_dir.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescapes_mount_points() {
        assert_eq!(unescape("/mnt/a\\040b"), "/mnt/a b");
    }

    #[test]
    fn finds_cgroup2_on_this_machine() {
        let root = cgroup2_root().expect("cgroup v2 is mounted on Floki's machines");
        assert!(root.join("cgroup.procs").exists());
    }
}
