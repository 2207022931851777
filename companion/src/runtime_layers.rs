//! The runtime layers' live side (the values themselves are read and merged by
//! [`vigil_core::runtime_layers`] while the config loads): the admin layer's values, which
//! `POST /runtime_modify` changes ([`RuntimeState`]), the layers in force that `GET /runtime`
//! shows, and the watch on the disk layers' `symlink_root`s ([`DiskWatch`]).
//!
//! vigil resolves runtime values when the config is loaded, so every change of the runtime
//! goes through the ordinary reload: the main loop reloads when a `symlink_root` is replaced,
//! and `/runtime_modify` reloads with the new admin values (a reload that fails keeps the old
//! values and the running config).
//!
//! Envoy re-reads its disk layers when a file is moved onto a `symlink_root` (inotify
//! `IN_MOVED_TO` on its directory: the `ln -s ... new && mv -T new current` swap its runtime
//! documentation prescribes), and only then or on an admin change; writing a file under the
//! current tree is not seen until then. vigil looks at the `symlink_root` entry itself once a
//! second and reloads when it is a different file than before (another inode: what a swap
//! leaves; a symlink's target or contents changing in place is not a swap, and not seen, as
//! in Envoy). It therefore applies exactly the values Envoy's next snapshot holds, up to a
//! second later than Envoy; the one difference is a `symlink_root` replaced other than by a
//! rename (removed and created again), which vigil sees and Envoy does not until its next
//! snapshot.

use arc_swap::ArcSwap;
use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::sync::{Arc, Mutex};
use vigil_core::config::RuntimeLayers;

/// The admin layer's values and the layers in force.
#[derive(Default)]
pub struct RuntimeState {
    /// What `/runtime_modify` set (an empty value removed a key), applied at every load.
    admin: Mutex<BTreeMap<String, String>>,
    /// The layers of the running config.
    current: ArcSwap<RuntimeLayers>,
    /// One `/runtime_modify` at a time: each one's reload sees its own values.
    pub modifying: tokio::sync::Mutex<()>,
}

impl RuntimeState {
    /// The admin layer's values.
    pub fn admin_values(&self) -> BTreeMap<String, String> {
        self.admin.lock().map(|a| a.clone()).unwrap_or_default()
    }

    /// Replaces the admin layer's values (returns the previous ones).
    pub fn set_admin_values(&self, values: BTreeMap<String, String>) -> BTreeMap<String, String> {
        match self.admin.lock() {
            Ok(mut admin) => std::mem::replace(&mut *admin, values),
            Err(poisoned) => std::mem::replace(&mut *poisoned.into_inner(), values),
        }
    }

    /// Records the layers of a config that loaded.
    pub fn publish(&self, layers: &RuntimeLayers) {
        self.current.store(Arc::new(layers.clone()));
    }

    /// The layers of the running config.
    pub fn layers(&self) -> Arc<RuntimeLayers> {
        self.current.load_full()
    }
}

/// The disk layers' `symlink_root`s and the file each one was when last looked at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskWatch(Vec<(String, Option<(u64, u64)>)>);

impl DiskWatch {
    pub fn new(roots: &[String]) -> DiskWatch {
        DiskWatch(roots.iter().map(|r| (r.clone(), identity(r))).collect())
    }

    /// The same roots as they are now (after a reload that failed: not tried again until the
    /// next swap).
    pub fn refreshed(&self) -> DiskWatch {
        DiskWatch(
            self.0
                .iter()
                .map(|(r, _)| (r.clone(), identity(r)))
                .collect(),
        )
    }

    /// Whether a `symlink_root` is now another file (or appeared, or went away).
    pub fn changed(&self) -> bool {
        self.0.iter().any(|(root, seen)| identity(root) != *seen)
    }
}

/// The directory entry's own identity (not its target's): device and inode.
fn identity(path: &str) -> Option<(u64, u64)> {
    std::fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_swapped_symlink_root_is_a_change_and_a_write_below_it_is_not() {
        let dir = std::env::temp_dir().join(format!("vigil-runtime-watch-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("v1/envoy")).expect("mkdir");
        let current = dir.join("current");
        std::os::unix::fs::symlink(dir.join("v1"), &current).expect("symlink");
        let root = current.display().to_string();
        let watch = DiskWatch::new(std::slice::from_ref(&root));
        std::fs::write(dir.join("v1/envoy/key"), "1").expect("write");
        assert!(!watch.changed(), "a write below the root is no swap");
        let new = dir.join("new");
        std::os::unix::fs::symlink(dir.join("v1"), &new).expect("symlink");
        std::fs::rename(&new, &current).expect("swap");
        assert!(watch.changed(), "the swap is seen");
        assert!(!DiskWatch::new(&[root]).changed());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn admin_values_are_replaced_as_a_whole() {
        let state = RuntimeState::default();
        let mut values = BTreeMap::new();
        values.insert("a".to_string(), "1".to_string());
        assert!(state.set_admin_values(values.clone()).is_empty());
        assert_eq!(state.admin_values(), values);
        assert!(state.layers().admin.is_none());
    }
}
