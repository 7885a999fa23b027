//! Where a session's Claude runs: the configured workspace (`shared`, the default), or a
//! directory of its own under `<state_dir>/workspaces/` (`per_session`).
//!
//! Session keys are opaque text from clients; `path_component` is the only way one becomes
//! part of a path: letters, digits, `-`, `_` and `.` are kept, everything else becomes `_`,
//! a leading `.` becomes `_` (so never `.` or `..`), and the result is cut to 80 bytes. A
//! hash of the whole key is always appended, so two keys never share a directory even when
//! they sanitise to the same text.

use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkspaceMode {
    Shared,
    PerSession,
}

impl std::str::FromStr for WorkspaceMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "shared" => Ok(WorkspaceMode::Shared),
            "per_session" => Ok(WorkspaceMode::PerSession),
            _ => Err(format!("`{s}` is not shared or per_session")),
        }
    }
}

pub fn workspace_for(mode: WorkspaceMode, shared: &Path, state_dir: &Path, key: &str) -> PathBuf {
    match mode {
        WorkspaceMode::Shared => shared.to_path_buf(),
        WorkspaceMode::PerSession => state_dir.join("workspaces").join(path_component(key)),
    }
}

/// A file-name-safe, collision-free rendering of a session key.
pub fn path_component(key: &str) -> String {
    let mut safe: String = key
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if safe.starts_with('.') {
        safe.replace_range(..1, "_");
    }
    safe.truncate(80);
    format!("{safe}-{:016x}", crate::fnv::fnv1a(key.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_keys_never_escape_the_workspaces_dir() {
        for key in [
            "../../etc",
            "..",
            ".",
            "/abs/path",
            "a\0b",
            "a/../../b",
            &"k".repeat(5000),
            "ключ",
        ] {
            let c = path_component(key);
            assert!(!c.contains('/') && !c.contains('\0'), "{c}");
            assert!(!c.starts_with('.'), "{c}");
            assert!(c.len() <= 80 + 17, "{}", c.len());
            let p = workspace_for(
                WorkspaceMode::PerSession,
                Path::new("/w"),
                Path::new("/state"),
                key,
            );
            assert_eq!(p.parent(), Some(Path::new("/state/workspaces")));
        }
    }

    #[test]
    fn similar_keys_get_different_directories() {
        assert_ne!(path_component("a/b"), path_component("a_b"));
        assert_eq!(
            path_component("agent:main:main"),
            path_component("agent:main:main")
        );
        assert!(path_component("agent:main:main").starts_with("agent_main_main-"));
    }

    #[test]
    fn shared_mode_uses_the_configured_workspace() {
        assert_eq!(
            workspace_for(WorkspaceMode::Shared, Path::new("/w"), Path::new("/s"), "k"),
            Path::new("/w")
        );
    }
}
