//! The gateway run unprivileged: as user 65534 with chosen capabilities
//! (setpriv), from a copy of the binary that user may execute.

use std::{os::unix::fs::PermissionsExt as _, path::PathBuf, process::Command};

/// The user the unprivileged runs use (nobody).
pub const NOBODY: u32 = 65534;

/// A copy of the gateway binary that user [`NOBODY`] may execute, in a
/// directory of its own (mode 0755, removed on drop), with a `run`
/// directory owned by that user.
pub struct Sandbox {
    pub dir: PathBuf,
}

impl Sandbox {
    /// `tag` names the directory (unique per test).
    pub fn new(tag: &str) -> Sandbox {
        let dir = std::env::temp_dir().join(format!("gw-sbx-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("run")).unwrap();
        let sbx = Sandbox { dir };
        std::fs::set_permissions(&sbx.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        // Copied by install(1), never opened for writing in this process:
        // a thread of this (multi-threaded) test process that spawns a
        // child while the copy is open for writing here hands that open
        // file to the child until it execs, and executing the copy in
        // that window fails with ETXTBSY ("Text file busy").
        let st = Command::new("install")
            .args(["-m", "0755"])
            .arg(crate::gateway_bin())
            .arg(sbx.bin())
            .status()
            .expect("install(1)");
        assert!(
            st.success(),
            "copying the gateway binary into {}",
            sbx.dir.display()
        );
        std::os::unix::fs::chown(sbx.dir.join("run"), Some(NOBODY), Some(NOBODY)).unwrap();
        sbx
    }

    /// The copy of the gateway binary.
    pub fn bin(&self) -> PathBuf {
        self.dir.join("gateway")
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// setpriv's capability arguments for exactly `caps` (setpriv syntax,
/// e.g. `+bpf,+net_admin`) as the inheritable, ambient and bounding sets;
/// with `caps` empty, none at all.
pub fn setpriv_caps(caps: &str) -> Vec<String> {
    if caps.is_empty() {
        vec!["--inh-caps=-all".into(), "--bounding-set=-all".into()]
    } else {
        vec![
            format!("--inh-caps=-all,{caps}"),
            format!("--ambient-caps=-all,{caps}"),
            format!("--bounding-set=-all,{caps}"),
        ]
    }
}
