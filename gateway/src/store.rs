//! The device registry on disk: an embedded redb database (ACID,
//! copy-on-write B-trees, crash-safe: a crash leaves the last committed
//! state), written by one thread that groups what arrives within 20 ms
//! into one transaction (one fsync).
//!
//! Tables: `devices` (device ID -> JSON of [`crate::registry::Device`]) and
//! `channels` ((device ID, channel ID) -> JSON of a catalog item) and
//! `keys` (media keys and VKEKs provisioned through the API, by name ->
//! JSON; the file is created mode 0600 because of them) and `sessions`
//! (established media sessions by stream ID -> JSON of their dialog and
//! media, so that a restarted daemon carries them on).

use std::{
    path::{Path, PathBuf},
    sync::mpsc,
    thread,
};

use anyhow::{Context as _, Result};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tracing::{error, warn};

const DEVICES: TableDefinition<&str, &[u8]> = TableDefinition::new("devices");
const CHANNELS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("channels");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const KEYS: TableDefinition<&str, &[u8]> = TableDefinition::new("keys");
const SESSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("sessions");

/// How long the writer gathers changes before committing them together.
const GROUP: std::time::Duration = std::time::Duration::from_millis(20);

/// One change to persist.
#[derive(Debug)]
pub enum Op {
    PutDevice(String, Vec<u8>),
    DeleteDevice(String),
    /// Replace all channels of a device.
    ReplaceChannels(String, Vec<(String, Vec<u8>)>),
    /// Insert or update some channels of a device.
    UpsertChannels(String, Vec<(String, Vec<u8>)>),
    PutKey(String, Vec<u8>),
    DeleteKey(String),
    PutSession(String, Vec<u8>),
    DeleteSession(String),
    /// Reply when everything queued before has been committed.
    Sync(mpsc::Sender<()>),
}

/// What was on disk at start-up.
pub struct Loaded {
    pub devices: Vec<(String, Vec<u8>)>,
    pub channels: Vec<(String, String, Vec<u8>)>,
    pub keys: Vec<(String, Vec<u8>)>,
    pub sessions: Vec<(String, Vec<u8>)>,
}

/// Handle to the writer thread.
#[derive(Clone)]
pub struct Store {
    tx: mpsc::Sender<Op>,
    pub path: PathBuf,
}

impl Store {
    /// Opens (or creates) the database with the default page cache
    /// (64 MiB), reads it whole and starts the writer.
    pub fn open(path: &Path) -> Result<(Store, Loaded)> {
        Self::open_with_cache(path, 64 << 20)
    }

    /// The same with a page cache of `cache_bytes`. redb's own default is
    /// 1 GiB, which a registry of 100 000 devices fills: the daemon's RSS
    /// then grows by that much for nothing an edge box can spare.
    pub fn open_with_cache(path: &Path, cache_bytes: usize) -> Result<(Store, Loaded)> {
        if let Some(dir) = path.parent() {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
            }
        }
        if !path.exists() {
            // Key material may be stored here: owner-only from the start.
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .with_context(|| format!("creating {}", path.display()))?;
        }
        let db = redb::Builder::new()
            .set_cache_size(cache_bytes)
            .create(path)
            .with_context(|| format!("opening the registry {}", path.display()))?;
        // Make sure the tables exist, then read everything.
        {
            let w = db.begin_write()?;
            w.open_table(DEVICES)?;
            w.open_table(CHANNELS)?;
            w.open_table(KEYS)?;
            w.open_table(SESSIONS)?;
            let mut meta = w.open_table(META)?;
            meta.insert("schema", &b"1"[..])?;
            drop(meta);
            w.commit()?;
        }
        let r = db.begin_read()?;
        let mut loaded = Loaded {
            devices: Vec::new(),
            channels: Vec::new(),
            keys: Vec::new(),
            sessions: Vec::new(),
        };
        for row in r.open_table(DEVICES)?.iter()? {
            let (k, v) = row?;
            loaded
                .devices
                .push((k.value().to_string(), v.value().to_vec()));
        }
        for row in r.open_table(CHANNELS)?.iter()? {
            let (k, v) = row?;
            let (d, c) = k.value();
            loaded
                .channels
                .push((d.to_string(), c.to_string(), v.value().to_vec()));
        }
        for row in r.open_table(KEYS)?.iter()? {
            let (k, v) = row?;
            loaded
                .keys
                .push((k.value().to_string(), v.value().to_vec()));
        }
        for row in r.open_table(SESSIONS)?.iter()? {
            let (k, v) = row?;
            loaded
                .sessions
                .push((k.value().to_string(), v.value().to_vec()));
        }
        drop(r);
        let (tx, rx) = mpsc::channel();
        thread::Builder::new()
            .name("registry-store".into())
            .spawn(move || writer(db, rx))
            .context("starting the store writer")?;
        Ok((
            Store {
                tx,
                path: path.to_path_buf(),
            },
            loaded,
        ))
    }

    pub fn send(&self, op: Op) {
        if self.tx.send(op).is_err() {
            error!("registry store writer is gone; change not persisted");
        }
    }

    /// Blocks until everything queued so far is on disk.
    pub fn sync(&self) {
        let (tx, rx) = mpsc::channel();
        self.send(Op::Sync(tx));
        let _ = rx.recv();
    }
}

fn apply(db: &Database, ops: &[Op]) -> Result<(), redb::Error> {
    let w = db.begin_write()?;
    {
        let mut devices = w.open_table(DEVICES)?;
        let mut channels = w.open_table(CHANNELS)?;
        let mut keys = w.open_table(KEYS)?;
        let mut sessions = w.open_table(SESSIONS)?;
        for op in ops {
            match op {
                Op::PutDevice(id, v) => {
                    devices.insert(id.as_str(), v.as_slice())?;
                }
                Op::DeleteDevice(id) => {
                    devices.remove(id.as_str())?;
                    delete_channels(&mut channels, id)?;
                }
                Op::ReplaceChannels(id, list) => {
                    delete_channels(&mut channels, id)?;
                    for (c, v) in list {
                        channels.insert((id.as_str(), c.as_str()), v.as_slice())?;
                    }
                }
                Op::UpsertChannels(id, list) => {
                    for (c, v) in list {
                        channels.insert((id.as_str(), c.as_str()), v.as_slice())?;
                    }
                }
                Op::PutKey(name, v) => {
                    keys.insert(name.as_str(), v.as_slice())?;
                }
                Op::DeleteKey(name) => {
                    keys.remove(name.as_str())?;
                }
                Op::PutSession(id, v) => {
                    sessions.insert(id.as_str(), v.as_slice())?;
                }
                Op::DeleteSession(id) => {
                    sessions.remove(id.as_str())?;
                }
                Op::Sync(_) => {}
            }
        }
    }
    w.commit()?;
    Ok(())
}

fn delete_channels(t: &mut redb::Table<(&str, &str), &[u8]>, id: &str) -> Result<(), redb::Error> {
    // Keys sort by device then channel: the device's rows are one range.
    t.retain_in((id, "")..(id, "\u{10FFFF}"), |_, _| false)?;
    Ok(())
}

fn writer(db: Database, rx: mpsc::Receiver<Op>) {
    while let Ok(first) = rx.recv() {
        // Group commit: gather what arrives within GROUP of the first op
        // (one fsync per batch instead of per device during a registration
        // storm); a Sync request commits at once.
        let deadline = std::time::Instant::now() + GROUP;
        let mut urgent = matches!(first, Op::Sync(_));
        let mut ops = vec![first];
        while !urgent && ops.len() < 10_000 {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(op) => {
                    urgent = matches!(op, Op::Sync(_));
                    ops.push(op);
                }
                Err(_) => break,
            }
        }
        if let Err(e) = apply(&db, &ops) {
            // Keep running: the in-memory registry is intact and the next
            // write of the same device carries its full state again.
            warn!(error = %e, ops = ops.len(), "registry write failed");
        }
        for op in ops {
            if let Op::Sync(tx) = op {
                let _ = tx.send(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_survive_reopen_and_channels_replace() {
        let dir = std::env::temp_dir().join(format!("gw-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("r.redb");
        {
            let (s, loaded) = Store::open(&path).unwrap();
            assert!(loaded.devices.is_empty());
            s.send(Op::PutDevice("a".into(), b"1".to_vec()));
            s.send(Op::PutDevice("b".into(), b"2".to_vec()));
            s.send(Op::ReplaceChannels(
                "a".into(),
                vec![("c1".into(), b"x".to_vec()), ("c2".into(), b"y".to_vec())],
            ));
            s.send(Op::ReplaceChannels(
                "b".into(),
                vec![("c9".into(), b"z".to_vec())],
            ));
            s.send(Op::ReplaceChannels(
                "a".into(),
                vec![("c3".into(), b"w".to_vec())],
            ));
            s.send(Op::UpsertChannels(
                "a".into(),
                vec![("c4".into(), b"v".to_vec())],
            ));
            s.send(Op::PutDevice("a".into(), b"3".to_vec()));
            s.send(Op::PutSession("0000000001".into(), b"s1".to_vec()));
            s.send(Op::PutSession("0000000002".into(), b"s2".to_vec()));
            s.send(Op::DeleteSession("0000000001".into()));
            s.sync();
        }
        // The writer thread still holds the database until its channel
        // closes; wait for the lock to go by retrying the open.
        let mut reopened = None;
        for _ in 0..100 {
            match Store::open(&path) {
                Ok(x) => {
                    reopened = Some(x);
                    break;
                }
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
            }
        }
        let (s, loaded) = reopened.expect("database reopens");
        let mut devs = loaded.devices.clone();
        devs.sort();
        assert_eq!(
            devs,
            vec![("a".into(), b"3".to_vec()), ("b".into(), b"2".to_vec())]
        );
        let ch: Vec<_> = loaded
            .channels
            .iter()
            .map(|(d, c, _)| format!("{d}/{c}"))
            .collect();
        assert_eq!(ch, vec!["a/c3", "a/c4", "b/c9"]);
        assert_eq!(
            loaded.sessions,
            vec![("0000000002".to_string(), b"s2".to_vec())]
        );
        s.send(Op::DeleteDevice("a".into()));
        s.sync();
        drop(s);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
