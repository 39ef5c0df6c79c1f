//! Media keys (GB 35114 style SM4 media encryption, see
//! `docs/media-encryption.md`): per device and channel, per profile, in
//! several versions at once so a rotation loses no frame.
//!
//! Keys come from the configuration (`[[keys]]`, `[[vkeks]]`), from the
//! REST API (persisted in the registry database) and, for `srtp-sm4`, from
//! a device's SDP answer (held by that session only). A key is provisioned
//! in clear or wrapped under the device's VKEK (`VEK = SM4-ECB-Decrypt(VKEK,
//! wrapped)`); listings show a check value, never key bytes.
//!
//! Receivers read keys through a [`KeyView`]: a snapshot of their channel's
//! keys that is refreshed only when the store's generation changes (one
//! atomic load per access unit or packet, no lock on the media path).

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, RwLock,
    },
};

use gb35114::{
    nal::{Lookup, NalKeys},
    sm4::{self, Sm4},
    srtp::{MasterKey, SrtpKeys},
};
use serde::Serialize;

pub use crate::config::{KeySpec, Profile, VkekSpec};
use crate::{store, sys::clock::wall_ms};

/// A fresh random srtp-sm4 master key and salt (a session key the gateway
/// offers in an INVITE).
pub fn random_master_key() -> std::io::Result<MasterKey> {
    use std::io::Read;
    let mut b = [0u8; 30];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    let mut key = [0u8; 16];
    let mut salt = [0u8; 14];
    key.copy_from_slice(&b[..16]);
    salt.copy_from_slice(&b[16..]);
    Ok(MasterKey { key, salt })
}

/// What listings show of a key.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct KeyInfo {
    pub device: String,
    pub channel: String,
    pub profile: Profile,
    pub version: u32,
    /// SM4-ECB of a zero block under the key, first 4 bytes (srtp-sm4: of
    /// the master key); identifies a key without revealing it.
    pub check: String,
    pub wrapped: bool,
    /// "config", "api" or "sdp".
    pub source: &'static str,
    pub added_ms: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_ms: Option<i64>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum KeyError {
    #[error("{0}")]
    Invalid(String),
    #[error("device {0} has no VKEK: provision it before wrapped keys")]
    NoVkek(String),
    #[error("key {0} already exists (delete it, or rotate)")]
    Exists(String),
    #[error("no such key {0}")]
    NotFound(String),
}

enum Material {
    Nal(Box<Sm4>),
    Srtp(MasterKey),
}

struct Entry {
    id: u64,
    spec: KeySpec,
    source: &'static str,
    added_ms: i64,
    material: Material,
    check: String,
}

impl Entry {
    fn info(&self) -> KeyInfo {
        KeyInfo {
            device: self.spec.device.clone(),
            channel: self.spec.channel.clone(),
            profile: self.spec.profile,
            version: self.spec.version,
            check: self.check.clone(),
            wrapped: self.spec.wrapped.is_some(),
            source: self.source,
            added_ms: self.added_ms,
            expires_ms: self.spec.expires_ms,
        }
    }
}

type Slot = (String, String, Profile, u32);

#[derive(Default)]
struct State {
    vkeks: BTreeMap<String, ([u8; 16], &'static str)>,
    keys: BTreeMap<Slot, Entry>,
}

/// All media keys of the daemon.
pub struct KeyStore {
    state: RwLock<State>,
    generation: AtomicU64,
    next_id: AtomicU64,
    store: Option<store::Store>,
}

pub fn parse_hex16(what: &str, s: &str) -> Result<[u8; 16], KeyError> {
    let v = parse_hex(what, s)?;
    v.try_into().map_err(|v: Vec<u8>| {
        KeyError::Invalid(format!("{what}: 16 bytes expected, got {}", v.len()))
    })
}

fn parse_hex(what: &str, s: &str) -> Result<Vec<u8>, KeyError> {
    let s = s.trim();
    if !s.len().is_multiple_of(2) || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(KeyError::Invalid(format!("{what}: hex digits expected")));
    }
    Ok((0..s.len())
        .step_by(2)
        .filter_map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect())
}

fn check_id(what: &str, id: &str, wildcard: bool) -> Result<(), KeyError> {
    if (wildcard && id == "*")
        || (!id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric()))
    {
        Ok(())
    } else {
        Err(KeyError::Invalid(format!("bad {what} {id:?}")))
    }
}

fn slot_name(s: &Slot) -> String {
    format!("key/{}/{}/{}/{}", s.0, s.1, s.2.as_str(), s.3)
}

fn slot_text(s: &Slot) -> String {
    format!("{}/{}/{} version {}", s.0, s.1, s.2.as_str(), s.3)
}

impl KeyStore {
    pub fn new(store: Option<store::Store>) -> Arc<KeyStore> {
        Arc::new(KeyStore {
            state: RwLock::new(State::default()),
            generation: AtomicU64::new(1),
            next_id: AtomicU64::new(1),
            store,
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    fn bump(&self) {
        self.generation.fetch_add(1, Ordering::Release);
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn persist(&self, name: String, value: Option<Vec<u8>>) {
        if let Some(st) = &self.store {
            st.send(match value {
                Some(v) => store::Op::PutKey(name, v),
                None => store::Op::DeleteKey(name),
            });
        }
    }

    /// Loads what the API provisioned earlier (from the registry database),
    /// after the configuration's keys. Entries that no longer parse, or that
    /// the configuration now provides, are reported and skipped.
    pub fn load_persisted(&self, rows: &[(String, Vec<u8>)]) -> Vec<String> {
        let mut problems = Vec::new();
        // VKEKs first: wrapped keys need them.
        for (name, v) in rows.iter().filter(|(n, _)| n.starts_with("vkek/")) {
            match serde_json::from_slice::<VkekSpec>(v) {
                Ok(s) => {
                    if self.read().vkeks.contains_key(&s.device) {
                        problems.push(format!("{name}: the configuration has this VKEK"));
                    } else if let Err(e) = self.set_vkek_inner(&s, "api", false) {
                        problems.push(format!("{name}: {e}"));
                    }
                }
                Err(e) => problems.push(format!("{name}: {e}")),
            }
        }
        for (name, v) in rows.iter().filter(|(n, _)| n.starts_with("key/")) {
            match serde_json::from_slice::<KeySpec>(v) {
                Ok(s) => {
                    if let Err(e) = self.add_inner(s, "api", false, false) {
                        problems.push(format!("{name}: {e}"));
                    }
                }
                Err(e) => problems.push(format!("{name}: {e}")),
            }
        }
        problems
    }

    /// Keys and VKEKs of the configuration file.
    pub fn load_config(&self, vkeks: &[VkekSpec], keys: &[KeySpec]) -> Result<(), KeyError> {
        for v in vkeks {
            self.set_vkek_inner(v, "config", false)?;
        }
        for k in keys {
            self.add_inner(k.clone(), "config", false, false)?;
        }
        Ok(())
    }

    pub fn set_vkek(&self, spec: &VkekSpec) -> Result<String, KeyError> {
        self.set_vkek_inner(spec, "api", true)
    }

    fn set_vkek_inner(
        &self,
        spec: &VkekSpec,
        source: &'static str,
        persist: bool,
    ) -> Result<String, KeyError> {
        check_id("device", &spec.device, false)?;
        let k = parse_hex16("vkek", &spec.key)?;
        let check = Sm4::new(&k).check_value();
        self.write().vkeks.insert(spec.device.clone(), (k, source));
        if persist {
            self.persist(
                format!("vkek/{}", spec.device),
                serde_json::to_vec(spec).ok(),
            );
        }
        Ok(check)
    }

    pub fn remove_vkek(&self, device: &str) -> bool {
        let removed = self.write().vkeks.remove(device).is_some();
        if removed {
            self.persist(format!("vkek/{device}"), None);
        }
        removed
    }

    /// `[{device, check, source}]` of the VKEKs.
    pub fn vkeks(&self) -> Vec<serde_json::Value> {
        self.read()
            .vkeks
            .iter()
            .map(|(d, (k, src))| {
                serde_json::json!({"device": d, "check": Sm4::new(k).check_value(), "source": src})
            })
            .collect()
    }

    /// Adds a key (API): 409-style error if that version exists.
    pub fn add(&self, spec: KeySpec) -> Result<KeyInfo, KeyError> {
        self.add_inner(spec, "api", false, true)
    }

    fn material(&self, st: &State, spec: &KeySpec) -> Result<Material, KeyError> {
        let clear =
            |hex: &Option<String>, wrapped: &Option<String>| -> Result<[u8; 16], KeyError> {
                match (hex, wrapped) {
                    (Some(k), None) => parse_hex16("key", k),
                    (None, Some(w)) => {
                        let w = parse_hex16("wrapped", w)?;
                        let (vkek, _) = st
                            .vkeks
                            .get(&spec.device)
                            .ok_or_else(|| KeyError::NoVkek(spec.device.clone()))?;
                        Ok(sm4::unwrap_key(vkek, &w))
                    }
                    (Some(_), Some(_)) => Err(KeyError::Invalid(
                        "give either key or wrapped, not both".into(),
                    )),
                    (None, None) => Err(KeyError::Invalid("key or wrapped is required".into())),
                }
            };
        match spec.profile {
            Profile::NalOfb => {
                if spec.salt.is_some() || spec.inline.is_some() {
                    return Err(KeyError::Invalid(
                        "salt/inline belong to srtp-sm4 keys".into(),
                    ));
                }
                Ok(Material::Nal(Box::new(Sm4::new(&clear(
                    &spec.key,
                    &spec.wrapped,
                )?))))
            }
            Profile::SrtpSm4 => {
                if let Some(inline) = &spec.inline {
                    if spec.key.is_some() || spec.wrapped.is_some() || spec.salt.is_some() {
                        return Err(KeyError::Invalid(
                            "give inline, or key/wrapped with salt".into(),
                        ));
                    }
                    return MasterKey::from_inline(inline)
                        .map(Material::Srtp)
                        .map_err(|e| KeyError::Invalid(format!("inline: {e}")));
                }
                let key = clear(&spec.key, &spec.wrapped)?;
                let salt_hex = spec.salt.as_deref().ok_or_else(|| {
                    KeyError::Invalid("srtp-sm4 keys need salt (28 hex digits) or inline".into())
                })?;
                let salt: [u8; 14] = parse_hex("salt", salt_hex)?
                    .try_into()
                    .map_err(|_| KeyError::Invalid("salt: 14 bytes expected".into()))?;
                Ok(Material::Srtp(MasterKey { key, salt }))
            }
        }
    }

    fn add_inner(
        &self,
        spec: KeySpec,
        source: &'static str,
        replace: bool,
        persist: bool,
    ) -> Result<KeyInfo, KeyError> {
        check_id("device", &spec.device, false)?;
        check_id("channel", &spec.channel, true)?;
        let slot: Slot = (
            spec.device.clone(),
            spec.channel.clone(),
            spec.profile,
            spec.version,
        );
        let info = {
            let mut st = self.write();
            let material = self.material(&st, &spec)?;
            if !replace && st.keys.contains_key(&slot) {
                return Err(KeyError::Exists(slot_text(&slot)));
            }
            let check = match &material {
                Material::Nal(c) => c.check_value(),
                Material::Srtp(m) => m.check_value(),
            };
            let e = Entry {
                id: self.next_id.fetch_add(1, Ordering::Relaxed),
                spec,
                source,
                added_ms: wall_ms(),
                material,
                check,
            };
            let info = e.info();
            if persist {
                self.persist(slot_name(&slot), serde_json::to_vec(&e.spec).ok());
            }
            st.keys.insert(slot, e);
            info
        };
        self.bump();
        Ok(info)
    }

    /// Rotation: adds the new version and retires every other version of
    /// the same device/channel/profile after `grace_secs` (both are live
    /// meanwhile, so a stream switching keys loses nothing).
    pub fn rotate(&self, spec: KeySpec, grace_secs: u64) -> Result<KeyInfo, KeyError> {
        let (d, c, p, v) = (
            spec.device.clone(),
            spec.channel.clone(),
            spec.profile,
            spec.version,
        );
        let info = self.add(spec)?;
        let until = wall_ms().saturating_add((grace_secs as i64).saturating_mul(1000));
        let mut changed = Vec::new();
        {
            let mut st = self.write();
            for (slot, e) in st.keys.iter_mut() {
                if slot.0 == d && slot.1 == c && slot.2 == p && slot.3 != v {
                    let exp = e.spec.expires_ms.map_or(until, |x| x.min(until));
                    e.spec.expires_ms = Some(exp);
                    if e.source == "api" {
                        changed.push((slot_name(slot), serde_json::to_vec(&e.spec).ok()));
                    }
                }
            }
        }
        for (n, v) in changed {
            self.persist(n, v);
        }
        self.bump();
        Ok(info)
    }

    pub fn remove(
        &self,
        device: &str,
        channel: &str,
        profile: Profile,
        version: u32,
    ) -> Result<KeyInfo, KeyError> {
        let slot: Slot = (device.into(), channel.into(), profile, version);
        let e = self
            .write()
            .keys
            .remove(&slot)
            .ok_or_else(|| KeyError::NotFound(slot_text(&slot)))?;
        self.persist(slot_name(&slot), None);
        self.bump();
        Ok(e.info())
    }

    /// Removes keys whose retirement time has passed (called every second).
    pub fn purge_expired(&self, now_ms: i64) -> Vec<KeyInfo> {
        let gone: Vec<Slot> = self
            .read()
            .keys
            .iter()
            .filter(|(_, e)| e.spec.expires_ms.is_some_and(|x| x <= now_ms))
            .map(|(s, _)| s.clone())
            .collect();
        let mut out = Vec::new();
        for s in gone {
            if let Ok(i) = self.remove(&s.0, &s.1, s.2, s.3) {
                out.push(i);
            }
        }
        out
    }

    pub fn list(&self, device: Option<&str>, channel: Option<&str>) -> Vec<KeyInfo> {
        self.read()
            .keys
            .values()
            .filter(|e| device.is_none_or(|d| d == e.spec.device))
            .filter(|e| channel.is_none_or(|c| c == e.spec.channel))
            .map(Entry::info)
            .collect()
    }

    /// The keys a stream of this device and channel uses: the channel's own
    /// or, when it has none of a profile, the device's "*" keys.
    pub fn channel_keys(&self, device: &str, channel: &str) -> ChannelKeys {
        let st = self.read();
        let mut out = ChannelKeys::default();
        for profile in [Profile::NalOfb, Profile::SrtpSm4] {
            // The channel's own keys of the profile, else the device's "*".
            for ch in [channel, "*"] {
                let lo: Slot = (device.into(), ch.into(), profile, 0);
                let hi: Slot = (device.into(), ch.into(), profile, u32::MAX);
                let mut any = false;
                for e in st.keys.range(lo..=hi).map(|(_, e)| e) {
                    any = true;
                    match &e.material {
                        Material::Nal(c) => out.nal.push((e.spec.version, e.id, (**c).clone())),
                        Material::Srtp(m) => out.srtp.push((e.id, m.clone())),
                    }
                }
                if any {
                    break;
                }
            }
        }
        out
    }
}

/// A snapshot of one channel's keys.
#[derive(Default, Clone)]
pub struct ChannelKeys {
    /// (key_version, key id, cipher)
    pub nal: Vec<(u32, u64, Sm4)>,
    /// (key id, master key)
    pub srtp: Vec<(u64, MasterKey)>,
}

impl NalKeys for ChannelKeys {
    fn lookup(&self, key_version: u32) -> Lookup<'_> {
        if self.nal.is_empty() {
            return Lookup::NoKeys;
        }
        match self.nal.iter().find(|(v, _, _)| *v == key_version) {
            Some((_, id, c)) => Lookup::Key { cipher: c, id: *id },
            None => Lookup::UnknownVersion,
        }
    }
}

impl SrtpKeys for ChannelKeys {
    fn keys(&self) -> Vec<(u64, MasterKey)> {
        self.srtp.clone()
    }
    fn is_empty(&self) -> bool {
        self.srtp.is_empty()
    }
}

/// Key ID of a session's SDP key (never collides with store IDs, which
/// count up from 1).
const SDP_KEY_ID: u64 = u64::MAX;

/// One stream's view of its channel's keys, refreshed when they change.
pub struct KeyView {
    store: Arc<KeyStore>,
    device: String,
    channel: String,
    generation: u64,
    snap: ChannelKeys,
    /// `srtp-sm4` key from the device's SDP answer.
    sdp: Option<MasterKey>,
}

impl KeyView {
    pub fn new(
        store: Arc<KeyStore>,
        device: &str,
        channel: &str,
        sdp: Option<MasterKey>,
    ) -> KeyView {
        let mut v = KeyView {
            store,
            device: device.into(),
            channel: channel.into(),
            generation: 0,
            snap: ChannelKeys::default(),
            sdp,
        };
        v.refresh();
        v
    }

    fn refresh(&mut self) {
        let g = self.store.generation();
        if g != self.generation {
            self.snap = self.store.channel_keys(&self.device, &self.channel);
            if let Some(m) = &self.sdp {
                self.snap.srtp.insert(0, (SDP_KEY_ID, m.clone()));
            }
            self.generation = g;
        }
    }

    /// The current keys (one atomic load when nothing changed).
    pub fn get(&mut self) -> &ChannelKeys {
        self.refresh();
        &self.snap
    }

    /// The stream is SRTP: the channel has srtp-sm4 keys, or SDP agreed one.
    pub fn srtp_configured(&mut self) -> bool {
        !self.get().srtp.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(profile: Profile, version: u32, key: &str) -> KeySpec {
        KeySpec {
            device: "34020000001320000001".into(),
            channel: "34020000001320000001".into(),
            profile,
            version,
            key: Some(key.into()),
            wrapped: None,
            salt: (profile == Profile::SrtpSm4).then(|| "00112233445566778899aabbccdd".into()),
            inline: None,
            expires_ms: None,
        }
    }

    const K1: &str = "0123456789abcdeffedcba9876543210";
    const K2: &str = "00000000000000000000000000000001";

    #[test]
    fn add_list_remove_without_key_bytes() {
        let ks = KeyStore::new(None);
        let g0 = ks.generation();
        let i = ks.add(spec(Profile::NalOfb, 1, K1)).unwrap();
        assert!(ks.generation() > g0);
        assert_eq!(
            i.check,
            Sm4::new(&parse_hex16("k", K1).unwrap()).check_value()
        );
        assert_eq!(i.check.len(), 8);
        let listed = serde_json::to_string(&ks.list(None, None)).unwrap();
        assert!(!listed.contains(K1), "{listed}");
        assert!(matches!(
            ks.add(spec(Profile::NalOfb, 1, K2)),
            Err(KeyError::Exists(_))
        ));
        ks.add(spec(Profile::NalOfb, 2, K2)).unwrap();
        let ck = ks.channel_keys("34020000001320000001", "34020000001320000001");
        assert!(matches!(ck.lookup(2), Lookup::Key { .. }));
        assert!(matches!(ck.lookup(3), Lookup::UnknownVersion));
        let other = ks.channel_keys("34020000001320000001", "34020000001310000002");
        assert!(matches!(other.lookup(1), Lookup::NoKeys));
        ks.remove(
            "34020000001320000001",
            "34020000001320000001",
            Profile::NalOfb,
            1,
        )
        .unwrap();
        assert!(matches!(
            ks.remove(
                "34020000001320000001",
                "34020000001320000001",
                Profile::NalOfb,
                1
            ),
            Err(KeyError::NotFound(_))
        ));
    }

    #[test]
    fn wrapped_keys_need_the_vkek_and_unwrap_to_the_vek() {
        let ks = KeyStore::new(None);
        let vkek = parse_hex16("v", K2).unwrap();
        let vek = parse_hex16("k", K1).unwrap();
        let wrapped = sm4::wrap_key(&vkek, &vek);
        let hex: String = wrapped.iter().map(|b| format!("{b:02x}")).collect();
        let mut s = spec(Profile::NalOfb, 1, K1);
        s.key = None;
        s.wrapped = Some(hex);
        assert_eq!(ks.add(s.clone()), Err(KeyError::NoVkek(s.device.clone())));
        ks.set_vkek(&VkekSpec {
            device: s.device.clone(),
            key: K2.into(),
        })
        .unwrap();
        let i = ks.add(s).unwrap();
        assert!(i.wrapped);
        assert_eq!(i.check, Sm4::new(&vek).check_value());
    }

    #[test]
    fn bad_input_is_an_error() {
        let ks = KeyStore::new(None);
        for (k, salt) in [("0123", None), ("zz23456789abcdeffedcba9876543210", None)] {
            let mut s = spec(Profile::NalOfb, 1, k);
            s.salt = salt;
            assert!(matches!(ks.add(s), Err(KeyError::Invalid(_))));
        }
        let mut s = spec(Profile::SrtpSm4, 1, K1);
        s.salt = None;
        assert!(matches!(ks.add(s), Err(KeyError::Invalid(_))));
        let mut s = spec(Profile::NalOfb, 1, K1);
        s.device = "../x".into();
        assert!(matches!(ks.add(s), Err(KeyError::Invalid(_))));
    }

    #[test]
    fn rotation_retires_old_versions_after_grace_and_views_follow() {
        let ks = KeyStore::new(None);
        ks.add(spec(Profile::NalOfb, 1, K1)).unwrap();
        let mut view = KeyView::new(
            ks.clone(),
            "34020000001320000001",
            "34020000001320000001",
            None,
        );
        assert_eq!(view.get().nal.len(), 1);
        ks.rotate(spec(Profile::NalOfb, 2, K2), 30).unwrap();
        assert_eq!(view.get().nal.len(), 2, "both live during the grace period");
        let exp = ks.list(None, None)[0].expires_ms.unwrap();
        assert!(ks.purge_expired(exp - 1).is_empty());
        assert_eq!(ks.purge_expired(exp).len(), 1);
        assert_eq!(view.get().nal.len(), 1);
        assert_eq!(view.get().nal[0].0, 2);
    }

    #[test]
    fn device_wide_keys_apply_to_channels_without_their_own() {
        let ks = KeyStore::new(None);
        let mut s = spec(Profile::SrtpSm4, 1, K1);
        s.channel = "*".into();
        ks.add(s).unwrap();
        assert!(!ks
            .channel_keys("34020000001320000001", "anychannel1")
            .srtp
            .is_empty());
        ks.add(spec(Profile::SrtpSm4, 5, K2)).unwrap();
        let ck = ks.channel_keys("34020000001320000001", "34020000001320000001");
        assert_eq!(ck.srtp.len(), 1, "own keys take precedence");
    }

    #[test]
    fn persisted_keys_load_back() {
        let dir = std::env::temp_dir().join(format!("gw-keys-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("r.redb");
        {
            let (st, _) = store::Store::open(&path).unwrap();
            let ks = KeyStore::new(Some(st.clone()));
            ks.set_vkek(&VkekSpec {
                device: "34020000001320000001".into(),
                key: K2.into(),
            })
            .unwrap();
            let mut s = spec(Profile::NalOfb, 1, K1);
            s.key = None;
            s.wrapped = Some("00112233445566778899aabbccddeeff".into());
            ks.add(s).unwrap();
            ks.add(spec(Profile::SrtpSm4, 3, K1)).unwrap();
            st.sync();
        }
        let mode = std::fs::metadata(&path).unwrap();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
            0o600
        );
        // The writer thread releases the database when its channel
        // closes; retry the open until it has.
        let mut reopened = None;
        for _ in 0..250 {
            if let Ok(x) = store::Store::open(&path) {
                reopened = Some(x);
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let (_st, loaded) = reopened.expect("database reopens");
        let ks = KeyStore::new(None);
        assert!(ks.load_persisted(&loaded.keys).is_empty());
        let l = ks.list(None, None);
        assert_eq!(l.len(), 2);
        assert!(l.iter().any(|k| k.wrapped && k.version == 1));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
