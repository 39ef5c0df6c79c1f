//! MANSCDP: the XML documents carried in SIP MESSAGE bodies
//! (`Content-Type: Application/MANSCDP+xml`).
//!
//! Devices send `Notify` documents (Keepalive, MediaStatus) and `Response`
//! documents answering the platform's `Query` documents (Catalog, DeviceInfo,
//! DeviceStatus). Real devices are sloppy, so [`parse`] is liberal: element
//! names match case-insensitively, text is trimmed, unknown entities and bare
//! `&` in text are kept verbatim, GB2312/GBK/GB18030/UTF-8 bodies are all
//! decoded (see [`decode`]). The builders ([`query`], [`keepalive`],
//! [`catalog_response`], [`device_info_response`],
//! [`device_status_response`]) are strict: fixed element order, every text
//! escaped, CRLF line ends, and the body encoded in the requested [`Charset`].
//!
//! Hostile input is bounded: bodies over [`MAX_BODY`] bytes, nesting deeper
//! than [`MAX_DEPTH`] and more than [`MAX_ITEMS`] `<Item>` elements are
//! errors, and no input makes [`parse`] panic.

use encoding_rs::{Encoding, GB18030, GBK, UTF_8};
use quick_xml::events::Event;
use quick_xml::Reader;
use serde::{Deserialize, Serialize};

/// Largest accepted body, in bytes.
pub const MAX_BODY: usize = 1 << 20;
/// Deepest accepted element nesting (the root element is depth 1).
pub const MAX_DEPTH: usize = 16;
/// Most `<Item>` elements accepted in one document.
pub const MAX_ITEMS: usize = 10_000;
/// Most elements of any name accepted in one document (bounds memory).
const MAX_ELEMENTS: usize = 100_000;
/// Longest offending value kept in [`Error::BadValue`].
const MAX_ERR_VALUE: usize = 64;

/// Why a body could not be decoded or parsed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The body is longer than [`MAX_BODY`] (carries the length).
    #[error("MANSCDP body of {0} bytes exceeds the limit of {max} bytes", max = MAX_BODY)]
    TooLarge(usize),
    /// Unknown or unsupported character set in the XML declaration.
    #[error("MANSCDP encoding: {0}")]
    Encoding(String),
    /// The document is not well-formed XML.
    #[error("MANSCDP XML: {0}")]
    Xml(String),
    /// A required element is absent or empty.
    #[error("MANSCDP element <{0}> is missing")]
    Missing(&'static str),
    /// A required element holds an unusable value (kept truncated).
    #[error("MANSCDP element <{field}> has a bad value {value:?}")]
    BadValue {
        /// Element (or `"root"` for the document element's name).
        field: &'static str,
        /// The offending text, at most 64 characters.
        value: String,
    },
    /// Elements nested deeper than [`MAX_DEPTH`].
    #[error("MANSCDP nesting deeper than {max}", max = MAX_DEPTH)]
    TooDeep,
    /// More than [`MAX_ITEMS`] items (or an unreasonable number of elements).
    #[error("MANSCDP document has too many items or elements")]
    TooManyItems,
}

impl Error {
    /// Short, stable snake_case label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::TooLarge(_) => "too_large",
            Error::Encoding(_) => "encoding",
            Error::Xml(_) => "xml",
            Error::Missing(_) => "missing_field",
            Error::BadValue { .. } => "bad_value",
            Error::TooDeep => "too_deep",
            Error::TooManyItems => "too_many_items",
        }
    }

    fn bad(field: &'static str, value: &str) -> Error {
        Error::BadValue {
            field,
            value: value.chars().take(MAX_ERR_VALUE).collect(),
        }
    }
}

// ---------------------------------------------------------------------------
// Data model
// ---------------------------------------------------------------------------

/// The document (root) element.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// `<Notify>`: unsolicited device notification (Keepalive, MediaStatus, ...).
    Notify,
    /// `<Response>`: answer to a query, matched by SN.
    Response,
    /// `<Query>`: sent by the platform.
    Query,
    /// `<Control>`: sent by the platform (PTZ, reboot, ...).
    Control,
}

impl Kind {
    /// The element name as the builders write it.
    pub fn as_str(&self) -> &'static str {
        match self {
            Kind::Notify => "Notify",
            Kind::Response => "Response",
            Kind::Query => "Query",
            Kind::Control => "Control",
        }
    }
}

/// A parsed MANSCDP document.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// Root element (matched case-insensitively).
    pub kind: Kind,
    /// `<CmdType>` as sent, trimmed.
    pub cmd_type: String,
    /// `<SN>`.
    pub sn: u32,
    /// `<DeviceID>`, trimmed.
    pub device_id: String,
    /// Command-specific content.
    pub body: Body,
    /// Character set the body was decoded with (`GBK` for GB2312/GBK
    /// declarations, decoded with the GB18030 decoder); see
    /// [`Charset::for_encoding`] to answer in the same one.
    pub encoding: &'static Encoding,
    /// True when the body held byte sequences malformed for `encoding`; they
    /// were decoded as U+FFFD instead of failing.
    pub lossy: bool,
}

/// Command-specific content of a [`Message`].
#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    /// `Notify` Keepalive. `faulty` lists the `<DeviceID>`s inside `<Info>`
    /// (GB/T 28181-2022: faulty sub-devices).
    Keepalive {
        /// `<Status>` (normally `OK`).
        status: Option<String>,
        /// Faulty sub-device IDs from `<Info>`.
        faulty: Vec<String>,
    },
    /// `Response` Catalog (one part of a possibly split catalog).
    Catalog(Catalog),
    /// `Response` DeviceInfo.
    DeviceInfo(DeviceInfo),
    /// `Response` DeviceStatus.
    DeviceStatus(DeviceStatus),
    /// `Response` RecordInfo (one part of a possibly split answer).
    RecordInfo(RecordInfo),
    /// `Notify` Alarm: an alarm a device raised (with or without a
    /// subscription).
    Alarm(Alarm),
    /// `Notify` MobilePosition: where a mobile device is (subscribed, or
    /// sent on its own).
    MobilePosition(MobilePosition),
    /// `Notify` MediaStatus (`121` = end of a playback/download file).
    MediaStatus {
        /// `<NotifyType>`.
        notify_type: String,
    },
    /// Any other CmdType/kind combination: every leaf child of the root
    /// (including CmdType, SN and DeviceID), name as sent and trimmed text,
    /// in document order.
    Other(Vec<(String, String)>),
}

/// A catalog response (or one part of it: collect parts by SN until
/// `sum_num` items are known).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Catalog {
    /// `<SumNum>`: total number of items across all parts.
    pub sum_num: u32,
    /// Items of this part without a `<DeviceID>`, dropped.
    #[serde(default)]
    pub skipped: u32,
    /// The items of this part, in document order.
    #[serde(default)]
    pub items: Vec<CatalogItem>,
}

/// An alarm notification (GB/T 28181-2016 A.2.5.3): trimmed text as sent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alarm {
    /// `<AlarmPriority>`: 1 (highest) to 4.
    pub priority: String,
    /// `<AlarmMethod>`: 1 phone, 2 device, 3 SMS, 4 GPS, 5 video, 6 device
    /// fault, 7 other.
    pub method: String,
    /// `<AlarmTime>` (`YYYY-MM-DDTHH:MM:SS`).
    pub time: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub longitude: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latitude: Option<String>,
    /// `<Info><AlarmType>`: what kind, by method (e.g. video: 2 motion).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alarm_type: Option<String>,
}

/// A MobilePosition `<Notify>`: `<Time>`, `<Longitude>` and `<Latitude>`
/// (degrees, WGS-84) required, `<Speed>` (km/h), `<Direction>` (degrees
/// from north) and `<Altitude>` (m) optional.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MobilePosition {
    pub time: String,
    pub longitude: f64,
    pub latitude: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speed: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub altitude: Option<f64>,
}

/// A RecordInfo response (or one part of it: collect parts by SN until
/// `sum_num` items are known).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordInfo {
    /// `<Name>` of the channel, when sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `<SumNum>`: total number of records across all parts.
    pub sum_num: u32,
    /// The records of this part, in document order.
    #[serde(default)]
    pub items: Vec<RecordItem>,
}

/// One `<Item>` of a RecordInfo answer: trimmed text as sent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordItem {
    pub device_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// `YYYY-MM-DDTHH:MM:SS`.
    pub start_time: String,
    pub end_time: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secrecy: Option<String>,
    /// `time`, `alarm`, `manual`, `all`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recorder_id: Option<String>,
    /// Bytes, as sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_size: Option<String>,
}

/// One `<Item>` of a catalog. All optional fields hold trimmed text as sent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogItem {
    /// `<DeviceID>` (required; items without it are skipped).
    pub device_id: String,
    /// `<Name>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `<Manufacturer>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manufacturer: Option<String>,
    /// `<Model>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// `<Owner>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// `<CivilCode>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub civil_code: Option<String>,
    /// `<Block>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block: Option<String>,
    /// `<Address>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// `<Parental>` (1 if the item has children).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parental: Option<String>,
    /// `<ParentID>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_id: Option<String>,
    /// `<SafetyWay>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub safety_way: Option<String>,
    /// `<RegisterWay>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub register_way: Option<String>,
    /// `<CertNum>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_num: Option<String>,
    /// `<Certifiable>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certifiable: Option<String>,
    /// `<ErrCode>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub err_code: Option<String>,
    /// `<EndTime>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_time: Option<String>,
    /// `<Secrecy>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secrecy: Option<String>,
    /// `<IPAddress>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_address: Option<String>,
    /// `<Port>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<String>,
    /// `<Password>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// `<Status>` (`ON`/`OFF`; some devices send `ONLINE`/`OFFLINE`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// `<Longitude>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub longitude: Option<String>,
    /// `<Latitude>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latitude: Option<String>,
    /// `<SecurityLevelCode>` (2022: A/B/C).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_level_code: Option<String>,
    /// `<BusinessGroupID>` (directly in the item or inside `<Info>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub business_group_id: Option<String>,
    /// `<PTZType>` (inside `<Info>` in 2016, directly in the item elsewhere).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ptz_type: Option<String>,
    /// Any other leaf child of the item or of its `<Info>`: name as sent,
    /// trimmed text, in document order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra: Vec<(String, String)>,
}

/// Number of optional named fields of [`CatalogItem`].
const ITEM_FIELDS: usize = 25;
/// The last `ITEM_INFO_FIELDS` of [`CatalogItem::slots`] are written inside `<Info>`.
const ITEM_INFO_FIELDS: usize = 1;

impl CatalogItem {
    /// The optional fields with their element names, in the order the
    /// builder writes them (the last [`ITEM_INFO_FIELDS`] go inside `<Info>`).
    fn slots(&self) -> [(&'static str, &Option<String>); ITEM_FIELDS] {
        [
            ("Name", &self.name),
            ("Manufacturer", &self.manufacturer),
            ("Model", &self.model),
            ("Owner", &self.owner),
            ("CivilCode", &self.civil_code),
            ("Block", &self.block),
            ("Address", &self.address),
            ("Parental", &self.parental),
            ("ParentID", &self.parent_id),
            ("SafetyWay", &self.safety_way),
            ("RegisterWay", &self.register_way),
            ("CertNum", &self.cert_num),
            ("Certifiable", &self.certifiable),
            ("ErrCode", &self.err_code),
            ("EndTime", &self.end_time),
            ("Secrecy", &self.secrecy),
            ("IPAddress", &self.ip_address),
            ("Port", &self.port),
            ("Password", &self.password),
            ("Status", &self.status),
            ("Longitude", &self.longitude),
            ("Latitude", &self.latitude),
            ("SecurityLevelCode", &self.security_level_code),
            ("BusinessGroupID", &self.business_group_id),
            ("PTZType", &self.ptz_type),
        ]
    }

    /// Mutable twin of [`Self::slots`] (same order).
    fn slots_mut(&mut self) -> [(&'static str, &mut Option<String>); ITEM_FIELDS] {
        [
            ("Name", &mut self.name),
            ("Manufacturer", &mut self.manufacturer),
            ("Model", &mut self.model),
            ("Owner", &mut self.owner),
            ("CivilCode", &mut self.civil_code),
            ("Block", &mut self.block),
            ("Address", &mut self.address),
            ("Parental", &mut self.parental),
            ("ParentID", &mut self.parent_id),
            ("SafetyWay", &mut self.safety_way),
            ("RegisterWay", &mut self.register_way),
            ("CertNum", &mut self.cert_num),
            ("Certifiable", &mut self.certifiable),
            ("ErrCode", &mut self.err_code),
            ("EndTime", &mut self.end_time),
            ("Secrecy", &mut self.secrecy),
            ("IPAddress", &mut self.ip_address),
            ("Port", &mut self.port),
            ("Password", &mut self.password),
            ("Status", &mut self.status),
            ("Longitude", &mut self.longitude),
            ("Latitude", &mut self.latitude),
            ("SecurityLevelCode", &mut self.security_level_code),
            ("BusinessGroupID", &mut self.business_group_id),
            ("PTZType", &mut self.ptz_type),
        ]
    }

    /// Stores one leaf: a known field (first occurrence wins) or an extra.
    fn set(&mut self, name: &str, text: &str) {
        for (n, slot) in self.slots_mut() {
            if n.eq_ignore_ascii_case(name) {
                if slot.is_none() {
                    *slot = Some(text.to_owned());
                }
                return;
            }
        }
        self.extra.push((name.to_owned(), text.to_owned()));
    }
}

/// A DeviceInfo response.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceInfo {
    /// `<Result>` (`OK`/`ERROR`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
    /// `<DeviceName>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_name: Option<String>,
    /// `<Manufacturer>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manufacturer: Option<String>,
    /// `<Model>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// `<Firmware>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware: Option<String>,
    /// `<Channel>` when it is a decimal u32 (otherwise the raw text goes to `extra`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<u32>,
    /// Any other leaf child of the root except CmdType/SN/DeviceID, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra: Vec<(String, String)>,
}

/// A DeviceStatus response.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceStatus {
    /// `<Result>` (`OK`/`ERROR`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
    /// `<Online>` (`ONLINE`/`OFFLINE`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub online: Option<String>,
    /// `<Status>` (`OK`/`ERROR`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// `<Encode>` (`ON`/`OFF`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encode: Option<String>,
    /// `<Record>` (`ON`/`OFF`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record: Option<String>,
    /// `<DeviceTime>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_time: Option<String>,
    /// `<Alarmstatus>` flattened: the non-empty texts of all its leaf
    /// descendants, in document order, joined by single spaces; for the
    /// standard `<Item><DeviceID/><DutyStatus/></Item>` list this is
    /// `"<id1> <status1> <id2> <status2> ..."`. `Some("")` for an empty
    /// element, `None` when absent. The builder turns the whitespace-separated
    /// tokens back into (DeviceID, DutyStatus) items.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alarm_status: Option<String>,
    /// `<Reason>` (why Status is ERROR).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Any other leaf child of the root except CmdType/SN/DeviceID, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra: Vec<(String, String)>,
}

// ---------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------

/// Decodes a body to text; see [`decode_checked`] for the rules. Malformed
/// byte sequences become U+FFFD silently here: use [`decode_checked`] (or
/// [`Message::lossy`]) to find out.
pub fn decode(body: &[u8]) -> Result<(String, &'static Encoding), Error> {
    decode_checked(body).map(|(text, encoding, _)| (text, encoding))
}

/// Decodes a body to text, returning `(text, encoding, lossy)`.
///
/// * A leading UTF-8 BOM is skipped.
/// * `encoding="..."` in the XML declaration (either quote, any case) wins.
///   Labels encoding_rs maps to GBK (GB2312, GBK, ...) or GB18030 are decoded
///   with the GB18030 decoder and reported as `GBK` / `GB18030`. Other
///   ASCII-compatible encoding_rs labels are honoured too. An unknown label,
///   or one that is not ASCII-compatible (UTF-16, ISO-2022-JP), is
///   [`Error::Encoding`].
/// * Without a declared encoding: UTF-8 if the bytes are valid UTF-8,
///   otherwise GB18030 (devices that omit the declaration but send GB bytes).
/// * Byte sequences malformed for the chosen encoding become U+FFFD and
///   `lossy` is true; decoding itself never fails on them.
/// * Bodies over [`MAX_BODY`] bytes are [`Error::TooLarge`].
pub fn decode_checked(body: &[u8]) -> Result<(String, &'static Encoding, bool), Error> {
    if body.len() > MAX_BODY {
        return Err(Error::TooLarge(body.len()));
    }
    let bytes = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    let Some(label) = declared_encoding(bytes) else {
        return Ok(match std::str::from_utf8(bytes) {
            Ok(s) => (s.to_owned(), UTF_8, false),
            Err(_) => {
                let (text, lossy) = GB18030.decode_without_bom_handling(bytes);
                (text.into_owned(), GB18030, lossy)
            }
        });
    };
    let shown = || String::from_utf8_lossy(label.get(..32).unwrap_or(label)).into_owned();
    let Some(encoding) = Encoding::for_label_no_replacement(label) else {
        return Err(Error::Encoding(format!(
            "unknown encoding label {:?}",
            shown()
        )));
    };
    if !encoding.is_ascii_compatible() {
        return Err(Error::Encoding(format!(
            "unsupported encoding {:?}",
            shown()
        )));
    }
    let decoder = if encoding == GBK { GB18030 } else { encoding };
    let (text, lossy) = decoder.decode_without_bom_handling(bytes);
    Ok((text.into_owned(), encoding, lossy))
}

/// The `encoding` pseudo-attribute of a leading `<?xml ...?>` declaration.
fn declared_encoding(bytes: &[u8]) -> Option<&[u8]> {
    let b = bytes.trim_ascii_start();
    let head = b.get(..5)?;
    if !head.eq_ignore_ascii_case(b"<?xml") || !b.get(5)?.is_ascii_whitespace() {
        return None;
    }
    // A declaration is short; do not scan a whole hostile body for `?>`.
    let window = b.get(..b.len().min(512))?;
    let end = find(window, b"?>")?;
    let decl = window.get(5..end)?;
    let at = find_ignore_case(decl, b"encoding")?;
    let rest = decl.get(at + 8..)?.trim_ascii_start();
    let rest = rest.strip_prefix(b"=")?.trim_ascii_start();
    let value = match rest.first()? {
        q @ (b'"' | b'\'') => {
            let inner = rest.get(1..)?;
            inner.get(..inner.iter().position(|c| c == q)?)?
        }
        // Unquoted (sloppy): up to whitespace.
        _ => rest.get(
            ..rest
                .iter()
                .position(|c| c.is_ascii_whitespace())
                .unwrap_or(rest.len()),
        )?,
    };
    let value = value.trim_ascii();
    (!value.is_empty()).then_some(value)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn find_ignore_case(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len())
        .position(|w| w.eq_ignore_ascii_case(needle))
}

// ---------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------

/// A minimal element tree: name (local part, as sent), concatenated direct
/// text, child elements. Depth is bounded by [`MAX_DEPTH`].
#[derive(Debug, Default)]
struct Elem {
    name: String,
    text: String,
    children: Vec<Elem>,
}

impl Elem {
    fn is(&self, name: &str) -> bool {
        self.name.eq_ignore_ascii_case(name)
    }

    fn is_leaf(&self) -> bool {
        self.children.is_empty()
    }

    fn text(&self) -> &str {
        self.text.trim()
    }

    /// Trimmed text of the first leaf child named `name`.
    fn leaf(&self, name: &str) -> Option<&str> {
        self.children
            .iter()
            .find(|c| c.is_leaf() && c.is(name))
            .map(Elem::text)
    }

    /// Trimmed text of a required, non-empty leaf child.
    fn required(&self, name: &'static str) -> Result<&str, Error> {
        match self.leaf(name) {
            Some(t) if !t.is_empty() => Ok(t),
            _ => Err(Error::Missing(name)),
        }
    }

    fn leaves(&self) -> impl Iterator<Item = &Elem> {
        self.children.iter().filter(|c| c.is_leaf())
    }

    /// Appends the non-empty texts of all leaf descendants to `out`.
    fn flatten_into(&self, out: &mut Vec<String>) {
        if self.is_leaf() {
            if !self.text().is_empty() {
                out.push(self.text().to_owned());
            }
        } else {
            for c in &self.children {
                c.flatten_into(out);
            }
        }
    }
}

/// Parses a MANSCDP body (raw bytes as received; see [`decode_checked`] for
/// the character-set rules).
///
/// Required: a `Notify`/`Response`/`Query`/`Control` root, non-empty
/// `<CmdType>` and `<DeviceID>`, a decimal u32 `<SN>`; `<SumNum>` for Catalog
/// responses, `<NotifyType>` for MediaStatus notifies. Empty elements count
/// as missing. Where an element is repeated, the first occurrence wins.
pub fn parse(body: &[u8]) -> Result<Message, Error> {
    let (text, encoding, lossy) = decode_checked(body)?;
    let root = build_tree(&text)?;
    let kind = match root.name.to_ascii_lowercase().as_str() {
        "notify" => Kind::Notify,
        "response" => Kind::Response,
        "query" => Kind::Query,
        "control" => Kind::Control,
        _ => return Err(Error::bad("root", &root.name)),
    };
    let cmd_type = root.required("CmdType")?.to_owned();
    let sn = match root.leaf("SN").map(str::trim) {
        None | Some("") => return Err(Error::Missing("SN")),
        Some(s) => s.parse::<u32>().map_err(|_| Error::bad("SN", s))?,
    };
    let device_id = root.required("DeviceID")?.to_owned();

    let cmd = |name: &str| cmd_type.eq_ignore_ascii_case(name);
    let body = match kind {
        Kind::Notify if cmd("Keepalive") => keepalive_body(&root),
        Kind::Notify if cmd("MediaStatus") => Body::MediaStatus {
            notify_type: root.required("NotifyType")?.to_owned(),
        },
        // A Notify Catalog is a lower platform's (or NVR's) change report;
        // each item's <Event> is in its extras.
        Kind::Response | Kind::Notify if cmd("Catalog") => Body::Catalog(catalog_body(&root)?),
        Kind::Response if cmd("DeviceInfo") => Body::DeviceInfo(device_info_body(&root)),
        Kind::Response if cmd("DeviceStatus") => Body::DeviceStatus(device_status_body(&root)),
        Kind::Response if cmd("RecordInfo") => Body::RecordInfo(record_info_body(&root)?),
        Kind::Notify if cmd("Alarm") => Body::Alarm(alarm_body(&root)?),
        Kind::Notify if cmd("MobilePosition") => Body::MobilePosition(mobile_position_body(&root)?),
        _ => Body::Other(
            root.leaves()
                .map(|c| (c.name.clone(), c.text().to_owned()))
                .collect(),
        ),
    };
    Ok(Message {
        kind,
        cmd_type,
        sn,
        device_id,
        body,
        encoding,
        lossy,
    })
}

/// Names handled by [`parse`] itself, never reported as extras.
fn is_header(name: &str) -> bool {
    ["CmdType", "SN", "DeviceID"]
        .iter()
        .any(|h| h.eq_ignore_ascii_case(name))
}

fn keepalive_body(root: &Elem) -> Body {
    let faulty = root
        .children
        .iter()
        .filter(|c| c.is("Info"))
        .flat_map(|info| info.leaves())
        .filter(|c| c.is("DeviceID") && !c.text().is_empty())
        .map(|c| c.text().to_owned())
        .collect();
    Body::Keepalive {
        status: root.leaf("Status").map(str::to_owned),
        faulty,
    }
}

fn catalog_body(root: &Elem) -> Result<Catalog, Error> {
    let sum_num = root.required("SumNum")?;
    let sum_num = sum_num
        .parse::<u32>()
        .map_err(|_| Error::bad("SumNum", sum_num))?;
    let mut catalog = Catalog {
        sum_num,
        ..Catalog::default()
    };
    let items = root
        .children
        .iter()
        .filter(|c| c.is("DeviceList"))
        .flat_map(|list| list.children.iter())
        .filter(|c| c.is("Item"));
    for item in items {
        match catalog_item(item) {
            Some(it) => catalog.items.push(it),
            None => catalog.skipped = catalog.skipped.saturating_add(1),
        }
    }
    Ok(catalog)
}

/// An Alarm notification: AlarmPriority, AlarmMethod and AlarmTime
/// required; AlarmType from `<Info>` (or the root, as some devices send).
fn alarm_body(root: &Elem) -> Result<Alarm, Error> {
    let opt = |n: &str| root.leaf(n).filter(|t| !t.is_empty()).map(str::to_owned);
    let info_type = root
        .children
        .iter()
        .filter(|c| c.is("Info"))
        .find_map(|i| i.leaf("AlarmType"))
        .filter(|t| !t.is_empty())
        .map(str::to_owned);
    Ok(Alarm {
        priority: root.required("AlarmPriority")?.to_owned(),
        method: root.required("AlarmMethod")?.to_owned(),
        time: root.required("AlarmTime")?.to_owned(),
        description: opt("AlarmDescription"),
        longitude: opt("Longitude"),
        latitude: opt("Latitude"),
        alarm_type: info_type.or_else(|| opt("AlarmType")),
    })
}

fn mobile_position_body(root: &Elem) -> Result<MobilePosition, Error> {
    let num =
        |n: &'static str, range: std::ops::RangeInclusive<f64>| -> Result<Option<f64>, Error> {
            match root.leaf(n).map(str::trim).filter(|t| !t.is_empty()) {
                None => Ok(None),
                Some(t) => t
                    .parse::<f64>()
                    .ok()
                    .filter(|x| range.contains(x))
                    .map(Some)
                    .ok_or_else(|| Error::bad(n, t)),
            }
        };
    Ok(MobilePosition {
        time: root.required("Time")?.to_owned(),
        longitude: num("Longitude", -180.0..=180.0)?.ok_or(Error::Missing("Longitude"))?,
        latitude: num("Latitude", -90.0..=90.0)?.ok_or(Error::Missing("Latitude"))?,
        speed: num("Speed", 0.0..=10_000.0)?,
        direction: num("Direction", 0.0..=360.0)?,
        altitude: num("Altitude", -1_000.0..=100_000.0)?,
    })
}

/// A RecordInfo answer: SumNum required and numeric; each `<Item>` of
/// `<RecordList>` needs StartTime and EndTime (an item without them is an
/// error: the answer is unusable, not partly right).
fn record_info_body(root: &Elem) -> Result<RecordInfo, Error> {
    let sum_num = root.required("SumNum")?;
    let sum_num = sum_num
        .parse::<u32>()
        .map_err(|_| Error::bad("SumNum", sum_num))?;
    let mut out = RecordInfo {
        name: root.leaf("Name").map(str::to_owned),
        sum_num,
        items: Vec::new(),
    };
    let items = root
        .children
        .iter()
        .filter(|c| c.is("RecordList"))
        .flat_map(|list| list.children.iter())
        .filter(|c| c.is("Item"));
    for item in items {
        let opt = |n: &str| item.leaf(n).filter(|t| !t.is_empty()).map(str::to_owned);
        out.items.push(RecordItem {
            device_id: opt("DeviceID").unwrap_or_default(),
            name: opt("Name"),
            file_path: opt("FilePath"),
            address: opt("Address"),
            start_time: item.required("StartTime")?.to_owned(),
            end_time: item.required("EndTime")?.to_owned(),
            secrecy: opt("Secrecy"),
            record_type: opt("Type"),
            recorder_id: opt("RecorderID"),
            file_size: opt("FileSize"),
        });
    }
    Ok(out)
}

/// One `<Item>`; `None` when it has no (non-empty) DeviceID.
fn catalog_item(item: &Elem) -> Option<CatalogItem> {
    let mut out = CatalogItem::default();
    let mut device_id = None;
    for child in &item.children {
        if child.is("Info") {
            // 2016 puts PTZType and friends in <Info>; flatten its leaves.
            for leaf in child.leaves() {
                out.set(&leaf.name, leaf.text());
            }
        } else if !child.is_leaf() {
            // Unknown nested structure: ignored.
        } else if child.is("DeviceID") {
            if device_id.is_none() && !child.text().is_empty() {
                device_id = Some(child.text().to_owned());
            }
        } else {
            out.set(&child.name, child.text());
        }
    }
    out.device_id = device_id?;
    Some(out)
}

fn device_info_body(root: &Elem) -> DeviceInfo {
    let mut info = DeviceInfo::default();
    for leaf in root.leaves() {
        let (name, text) = (leaf.name.as_str(), leaf.text());
        let slot = match name.to_ascii_lowercase().as_str() {
            "result" => &mut info.result,
            "devicename" => &mut info.device_name,
            "manufacturer" => &mut info.manufacturer,
            "model" => &mut info.model,
            "firmware" => &mut info.firmware,
            "channel" if info.channel.is_none() => match text.parse::<u32>() {
                Ok(n) => {
                    info.channel = Some(n);
                    continue;
                }
                Err(_) => {
                    info.extra.push((name.to_owned(), text.to_owned()));
                    continue;
                }
            },
            "channel" => continue,
            _ if is_header(name) => continue,
            _ => {
                info.extra.push((name.to_owned(), text.to_owned()));
                continue;
            }
        };
        if slot.is_none() {
            *slot = Some(text.to_owned());
        }
    }
    info
}

fn device_status_body(root: &Elem) -> DeviceStatus {
    let mut st = DeviceStatus::default();
    for child in &root.children {
        if child.is("Alarmstatus") {
            if st.alarm_status.is_none() {
                let mut parts = Vec::new();
                child.flatten_into(&mut parts);
                st.alarm_status = Some(parts.join(" "));
            }
            continue;
        }
        if !child.is_leaf() {
            continue;
        }
        let (name, text) = (child.name.as_str(), child.text());
        let slot = match name.to_ascii_lowercase().as_str() {
            "result" => &mut st.result,
            "online" => &mut st.online,
            "status" => &mut st.status,
            "encode" => &mut st.encode,
            "record" => &mut st.record,
            "devicetime" => &mut st.device_time,
            "reason" => &mut st.reason,
            _ if is_header(name) => continue,
            _ => {
                st.extra.push((name.to_owned(), text.to_owned()));
                continue;
            }
        };
        if slot.is_none() {
            *slot = Some(text.to_owned());
        }
    }
    st
}

/// Builds the element tree with quick-xml's event reader, enforcing the
/// limits and the well-formedness rules quick-xml leaves to the caller
/// (single root, no text outside it, matching end tags compared
/// case-insensitively, nothing left open).
fn build_tree(text: &str) -> Result<Elem, Error> {
    let mut reader = Reader::from_str(text);
    let config = reader.config_mut();
    config.allow_dangling_amp = true;
    config.check_end_names = false; // done below, case-insensitively
    config.trim_text(false);

    let mut stack: Vec<Elem> = Vec::new();
    let mut root: Option<Elem> = None;
    let (mut elements, mut items) = (0usize, 0usize);
    let outside = || Error::Xml("content outside the root element".into());

    loop {
        let event = reader.read_event().map_err(|e| Error::Xml(e.to_string()))?;
        match event {
            Event::Start(ref e) | Event::Empty(ref e) => {
                if root.is_some() {
                    return Err(outside());
                }
                if stack.len() >= MAX_DEPTH {
                    return Err(Error::TooDeep);
                }
                elements += 1;
                if elements > MAX_ELEMENTS {
                    return Err(Error::TooManyItems);
                }
                let name: &str = e.local_name().into_inner();
                if name.eq_ignore_ascii_case("Item") {
                    items += 1;
                    if items > MAX_ITEMS {
                        return Err(Error::TooManyItems);
                    }
                }
                let elem = Elem {
                    name: name.to_owned(),
                    ..Elem::default()
                };
                if matches!(event, Event::Start(_)) {
                    stack.push(elem);
                } else {
                    attach(&mut stack, &mut root, elem);
                }
            }
            Event::End(e) => {
                let Some(elem) = stack.pop() else {
                    return Err(outside());
                };
                let end: &str = e.local_name().into_inner();
                if !elem.name.eq_ignore_ascii_case(end) {
                    return Err(Error::Xml(format!(
                        "end tag </{}> does not match <{}>",
                        truncate(end),
                        truncate(&elem.name)
                    )));
                }
                attach(&mut stack, &mut root, elem);
            }
            Event::Text(t) => match stack.last_mut() {
                Some(top) => top.text.push_str(&t),
                None if t.trim().is_empty() => {}
                None => return Err(outside()),
            },
            Event::CData(c) => match stack.last_mut() {
                Some(top) => top.text.push_str(&c),
                None => return Err(outside()),
            },
            Event::GeneralRef(r) => match stack.last_mut() {
                Some(top) => push_reference(&mut top.text, &r),
                None => return Err(outside()),
            },
            Event::Eof => break,
            // Declaration, comments, processing instructions, DOCTYPE.
            _ => {}
        }
    }
    if let Some(open) = stack.last() {
        return Err(Error::Xml(format!(
            "element <{}> is not closed",
            truncate(&open.name)
        )));
    }
    root.ok_or_else(|| Error::Xml("no root element".into()))
}

/// Attaches a finished element to its parent, or makes it the root.
fn attach(stack: &mut [Elem], root: &mut Option<Elem>, elem: Elem) {
    match stack.last_mut() {
        Some(parent) => parent.children.push(elem),
        None => *root = Some(elem),
    }
}

/// Resolves `&name;`: the five predefined entities and character references;
/// anything else (devices write `R&D;` or `&nbsp;`) is kept verbatim.
fn push_reference(out: &mut String, name: &str) {
    let resolved = match name {
        "lt" => Some('<'),
        "gt" => Some('>'),
        "amp" => Some('&'),
        "quot" => Some('"'),
        "apos" => Some('\''),
        _ => name.strip_prefix('#').and_then(|num| {
            let code = match num.strip_prefix(['x', 'X']) {
                Some(hex) => u32::from_str_radix(hex, 16).ok(),
                None => num.parse::<u32>().ok(),
            }?;
            char::from_u32(code).filter(|&c| c != '\0')
        }),
    };
    match resolved {
        Some(c) => out.push(c),
        None => {
            out.push('&');
            out.push_str(name);
            out.push(';');
        }
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(MAX_ERR_VALUE).collect()
}

// ---------------------------------------------------------------------------
// Building
// ---------------------------------------------------------------------------

/// Character set of a document the builders produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Charset {
    /// `GB2312` (2016 practice; encoded with encoding_rs's GBK encoder).
    Gb2312,
    /// `GB18030` (required by GB/T 28181-2022).
    Gb18030,
    /// `UTF-8`.
    Utf8,
}

impl Charset {
    /// The label written in the XML declaration.
    pub fn label(&self) -> &'static str {
        match self {
            Charset::Gb2312 => "GB2312",
            Charset::Gb18030 => "GB18030",
            Charset::Utf8 => "UTF-8",
        }
    }

    /// The encoding_rs encoding used to encode (and what [`parse`] reports
    /// for a body declaring this charset).
    pub fn encoding(&self) -> &'static Encoding {
        match self {
            Charset::Gb2312 => GBK,
            Charset::Gb18030 => GB18030,
            Charset::Utf8 => UTF_8,
        }
    }

    /// The charset to answer a body decoded with `encoding` in
    /// ([`Message::encoding`]): GBK → GB2312, GB18030 → GB18030, anything
    /// else → UTF-8.
    pub fn for_encoding(encoding: &'static Encoding) -> Charset {
        if encoding == GBK {
            Charset::Gb2312
        } else if encoding == GB18030 {
            Charset::Gb18030
        } else {
            Charset::Utf8
        }
    }
}

/// A tiny XML writer: one element per line, CRLF line ends, escaped text.
struct Doc {
    out: String,
    root: &'static str,
}

impl Doc {
    fn new(charset: Charset, root: &'static str, cmd_type: &str, sn: u32, device_id: &str) -> Doc {
        let mut doc = Doc {
            out: format!(
                "<?xml version=\"1.0\" encoding=\"{}\"?>\r\n<{root}>\r\n",
                charset.label()
            ),
            root,
        };
        doc.leaf("CmdType", cmd_type);
        doc.leaf("SN", &sn.to_string());
        doc.leaf("DeviceID", device_id);
        doc
    }

    fn leaf(&mut self, name: &str, text: &str) {
        self.out.push('<');
        self.out.push_str(name);
        self.out.push('>');
        escape_into(&mut self.out, text);
        self.out.push_str("</");
        self.out.push_str(name);
        self.out.push_str(">\r\n");
    }

    fn opt(&mut self, name: &str, text: &Option<String>) {
        if let Some(text) = text {
            self.leaf(name, text);
        }
    }

    /// Extras with names that are not plain ASCII XML names are dropped.
    fn extras(&mut self, extra: &[(String, String)]) {
        for (name, text) in extra {
            if is_plain_name(name) {
                self.leaf(name, text);
            }
        }
    }

    fn open(&mut self, name: &str, num: Option<usize>) {
        self.out.push('<');
        self.out.push_str(name);
        if let Some(n) = num {
            self.out.push_str(&format!(" Num=\"{n}\""));
        }
        self.out.push_str(">\r\n");
    }

    fn close(&mut self, name: &str) {
        self.out.push_str("</");
        self.out.push_str(name);
        self.out.push_str(">\r\n");
    }

    fn finish(mut self, charset: Charset) -> Vec<u8> {
        let root = self.root;
        self.close(root);
        // Characters GBK cannot encode come out as `&#N;`, valid in text.
        let (bytes, _, _) = charset.encoding().encode(&self.out);
        bytes.into_owned()
    }
}

/// Escapes `& < > " '` and drops characters XML 1.0 does not allow.
fn escape_into(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(c),
            c if c < ' ' || c == '\u{FFFE}' || c == '\u{FFFF}' => {}
            c => out.push(c),
        }
    }
}

/// An ASCII XML name (letters, digits, `_ - .`, not starting with a digit,
/// `-` or `.`).
fn is_plain_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// A `<Query>` (Catalog, DeviceInfo, DeviceStatus, ...):
/// `<?xml version="1.0" encoding="GB2312"?>\r\n<Query>\r\n<CmdType>Catalog</CmdType>\r\n<SN>17</SN>\r\n<DeviceID>…</DeviceID>\r\n</Query>\r\n`.
pub fn query(cmd_type: &str, sn: u32, device_id: &str, charset: Charset) -> Vec<u8> {
    Doc::new(charset, "Query", cmd_type, sn, device_id).finish(charset)
}

/// Every leaf below the root of a MANSCDP body, in document order, as
/// (`path`, trimmed text) with `path` the element names below the root
/// joined by `/` (`PTZCmd`, `Info/ControlPriority`, `HomePosition/Enabled`):
/// what [`Body::Other`] leaves out of nested commands.
pub fn leaf_paths(body: &[u8]) -> Result<Vec<(String, String)>, Error> {
    fn walk(e: &Elem, prefix: &str, out: &mut Vec<(String, String)>) {
        for c in &e.children {
            let path = if prefix.is_empty() {
                c.name.clone()
            } else {
                format!("{prefix}/{}", c.name)
            };
            if c.is_leaf() {
                out.push((path, c.text().to_owned()));
            } else {
                walk(c, &path, out);
            }
        }
    }
    let (text, _, _) = decode_checked(body)?;
    let root = build_tree(&text)?;
    let mut out = Vec::new();
    walk(&root, "", &mut out);
    Ok(out)
}

/// A DeviceControl `<Control>` for `target` (a channel, or the device
/// itself): the command's leaves ([`crate::control::Control::leaves`]),
/// a path `A/B` written as `<A><B>..</B></A>` with consecutive leaves of
/// the same `A` in one element. An invalid command is an error.
pub fn device_control(
    sn: u32,
    target: &str,
    control: &crate::control::Control,
    charset: Charset,
) -> Result<Vec<u8>, String> {
    let mut doc = Doc::new(charset, "Control", "DeviceControl", sn, target);
    let mut open: Option<String> = None;
    for (path, text) in control.leaves()? {
        let (parent, name) = match path.split_once('/') {
            Some((p, n)) => (Some(p.to_string()), n.to_string()),
            None => (None, path.clone()),
        };
        if open != parent {
            if let Some(p) = open.take() {
                doc.close(&p);
            }
            if let Some(p) = &parent {
                doc.open(p, None);
            }
            open = parent;
        }
        doc.leaf(&name, &text);
    }
    if let Some(p) = open {
        doc.close(&p);
    }
    Ok(doc.finish(charset))
}

/// A DeviceControl `<Response>` with `<Result>OK</Result>` (or `ERROR`).
pub fn device_control_response(sn: u32, target: &str, ok: bool, charset: Charset) -> Vec<u8> {
    let mut doc = Doc::new(charset, "Response", "DeviceControl", sn, target);
    doc.leaf("Result", if ok { "OK" } else { "ERROR" });
    doc.finish(charset)
}

/// A RecordInfo `<Query>` for `channel` between `start` and `end`
/// (`YYYY-MM-DDTHH:MM:SS`), of `record_type` (`all`, `time`, `alarm`,
/// `manual`), Secrecy 0.
pub fn record_info_query(
    sn: u32,
    channel: &str,
    start: &str,
    end: &str,
    record_type: &str,
    charset: Charset,
) -> Vec<u8> {
    let mut doc = Doc::new(charset, "Query", "RecordInfo", sn, channel);
    doc.leaf("StartTime", start);
    doc.leaf("EndTime", end);
    doc.leaf("Secrecy", "0");
    doc.leaf("Type", record_type);
    doc.finish(charset)
}

/// A RecordInfo `<Response>` part: `items` of a total of `sum_num`
/// (`<RecordList Num>` is this part's count).
pub fn record_info_response(
    sn: u32,
    channel: &str,
    name: Option<&str>,
    sum_num: u32,
    items: &[RecordItem],
    charset: Charset,
) -> Vec<u8> {
    let mut doc = Doc::new(charset, "Response", "RecordInfo", sn, channel);
    if let Some(n) = name {
        doc.leaf("Name", n);
    }
    doc.leaf("SumNum", &sum_num.to_string());
    doc.open("RecordList", Some(items.len()));
    for it in items {
        doc.open("Item", None);
        doc.leaf("DeviceID", &it.device_id);
        doc.opt("Name", &it.name);
        doc.opt("FilePath", &it.file_path);
        doc.opt("Address", &it.address);
        doc.leaf("StartTime", &it.start_time);
        doc.leaf("EndTime", &it.end_time);
        doc.opt("Secrecy", &it.secrecy);
        doc.opt("Type", &it.record_type);
        doc.opt("RecorderID", &it.recorder_id);
        doc.opt("FileSize", &it.file_size);
        doc.close("Item");
    }
    doc.close("RecordList");
    doc.finish(charset)
}

/// An Alarm `<Notify>` from device `device_id`.
pub fn alarm_notify(sn: u32, device_id: &str, alarm: &Alarm, charset: Charset) -> Vec<u8> {
    let mut doc = Doc::new(charset, "Notify", "Alarm", sn, device_id);
    doc.leaf("AlarmPriority", &alarm.priority);
    doc.leaf("AlarmMethod", &alarm.method);
    doc.leaf("AlarmTime", &alarm.time);
    doc.opt("AlarmDescription", &alarm.description);
    doc.opt("Longitude", &alarm.longitude);
    doc.opt("Latitude", &alarm.latitude);
    if let Some(t) = &alarm.alarm_type {
        doc.open("Info", None);
        doc.leaf("AlarmType", t);
        doc.close("Info");
    }
    doc.finish(charset)
}

/// A MobilePosition `<Notify>` from `device_id`.
pub fn mobile_position_notify(
    sn: u32,
    device_id: &str,
    p: &MobilePosition,
    charset: Charset,
) -> Vec<u8> {
    let mut doc = Doc::new(charset, "Notify", "MobilePosition", sn, device_id);
    doc.leaf("Time", &p.time);
    doc.leaf("Longitude", &format!("{:.6}", p.longitude));
    doc.leaf("Latitude", &format!("{:.6}", p.latitude));
    for (n, v) in [
        ("Speed", p.speed),
        ("Direction", p.direction),
        ("Altitude", p.altitude),
    ] {
        if let Some(v) = v {
            doc.leaf(n, &format!("{v}"));
        }
    }
    doc.finish(charset)
}

/// A preset of a PTZ camera (PresetQuery answer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Preset {
    pub id: String,
    pub name: Option<String>,
}

/// A PresetQuery `<Response>`: `<PresetList Num="N">` of `<Item>`s with
/// `<PresetID>` and `<PresetName>`.
pub fn preset_query_response(
    sn: u32,
    target: &str,
    presets: &[Preset],
    charset: Charset,
) -> Vec<u8> {
    let mut doc = Doc::new(charset, "Response", "PresetQuery", sn, target);
    doc.open("PresetList", Some(presets.len()));
    for p in presets {
        doc.open("Item", None);
        doc.leaf("PresetID", &p.id);
        doc.opt("PresetName", &p.name);
        doc.close("Item");
    }
    doc.close("PresetList");
    doc.finish(charset)
}

/// The presets of a PresetQuery `<Response>` body, in document order
/// (items without a PresetID are left out).
pub fn preset_list(body: &[u8]) -> Result<Vec<Preset>, Error> {
    let mut out: Vec<Preset> = Vec::new();
    for (path, text) in leaf_paths(body)? {
        let mut parts = path.rsplit('/');
        let (leaf, item) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        if !item.eq_ignore_ascii_case("Item") {
            continue;
        }
        if leaf.eq_ignore_ascii_case("PresetID") {
            out.push(Preset {
                id: text,
                name: None,
            });
        } else if leaf.eq_ignore_ascii_case("PresetName") {
            if let Some(p) = out.last_mut().filter(|p| p.name.is_none()) {
                p.name = Some(text);
            }
        }
    }
    out.retain(|p| !p.id.is_empty());
    Ok(out)
}

/// The `<Query>` of a SUBSCRIBE: `Catalog`, `Alarm` (all priorities and
/// methods: `StartAlarmPriority` 0, `EndAlarmPriority` 0, `AlarmMethod`
/// 0) or `MobilePosition` (with `<Interval>` seconds).
pub fn subscribe_query(
    cmd_type: &str,
    sn: u32,
    device_id: &str,
    interval_secs: u32,
    charset: Charset,
) -> Vec<u8> {
    let mut doc = Doc::new(charset, "Query", cmd_type, sn, device_id);
    if cmd_type.eq_ignore_ascii_case("Alarm") {
        doc.leaf("StartAlarmPriority", "0");
        doc.leaf("EndAlarmPriority", "0");
        doc.leaf("AlarmMethod", "0");
    } else if cmd_type.eq_ignore_ascii_case("MobilePosition") {
        doc.leaf("Interval", &interval_secs.to_string());
    }
    doc.finish(charset)
}

/// A MediaStatus `<Notify>` (`121`: the end of a playback or download
/// file) for `channel`.
pub fn media_status(sn: u32, channel: &str, notify_type: &str, charset: Charset) -> Vec<u8> {
    let mut doc = Doc::new(charset, "Notify", "MediaStatus", sn, channel);
    doc.leaf("NotifyType", notify_type);
    doc.finish(charset)
}

/// The platform's `<Response>` to an Alarm notification: Result OK.
pub fn alarm_response(sn: u32, device_id: &str, charset: Charset) -> Vec<u8> {
    let mut doc = Doc::new(charset, "Response", "Alarm", sn, device_id);
    doc.leaf("Result", "OK");
    doc.finish(charset)
}

/// A Keepalive `<Notify>` with `<Status>OK</Status>`.
pub fn keepalive(sn: u32, device_id: &str, charset: Charset) -> Vec<u8> {
    let mut doc = Doc::new(charset, "Notify", "Keepalive", sn, device_id);
    doc.leaf("Status", "OK");
    doc.finish(charset)
}

/// A Catalog `<Response>` carrying `items` (one part of a catalog whose total
/// is `sum_num`). Items are written in the standard field order with
/// `<PTZType>` inside `<Info>` and extras last; items with an empty
/// `device_id` are left out and not counted in `<DeviceList Num>`. With no
/// items, `<DeviceList>` is omitted.
pub fn catalog_response(
    sn: u32,
    device_id: &str,
    sum_num: u32,
    items: &[CatalogItem],
    charset: Charset,
) -> Vec<u8> {
    catalog_doc("Response", sn, device_id, sum_num, items, charset)
}

/// A Catalog `<Notify>` (catalog changes a lower-level platform reports to
/// its superior): the items with an `<Event>` each (ON, OFF, ADD, DEL,
/// UPDATE, in their extras), `SumNum` = the number of items.
pub fn catalog_notify(
    sn: u32,
    device_id: &str,
    items: &[CatalogItem],
    charset: Charset,
) -> Vec<u8> {
    catalog_doc("Notify", sn, device_id, items.len() as u32, items, charset)
}

fn catalog_doc(
    root: &'static str,
    sn: u32,
    device_id: &str,
    sum_num: u32,
    items: &[CatalogItem],
    charset: Charset,
) -> Vec<u8> {
    let mut doc = Doc::new(charset, root, "Catalog", sn, device_id);
    doc.leaf("SumNum", &sum_num.to_string());
    let valid: Vec<&CatalogItem> = items.iter().filter(|i| !i.device_id.is_empty()).collect();
    if !valid.is_empty() {
        doc.open("DeviceList", Some(valid.len()));
        for item in valid {
            doc.open("Item", None);
            doc.leaf("DeviceID", &item.device_id);
            let slots = item.slots();
            let (plain, info) = slots.split_at(ITEM_FIELDS - ITEM_INFO_FIELDS);
            for (name, value) in plain {
                doc.opt(name, value);
            }
            if info.iter().any(|(_, v)| v.is_some()) {
                doc.open("Info", None);
                for (name, value) in info {
                    doc.opt(name, value);
                }
                doc.close("Info");
            }
            doc.extras(&item.extra);
            doc.close("Item");
        }
        doc.close("DeviceList");
    }
    doc.finish(charset)
}

/// A DeviceInfo `<Response>`: DeviceName, Result, Manufacturer, Model,
/// Firmware, Channel (those present), extras last.
pub fn device_info_response(
    sn: u32,
    device_id: &str,
    info: &DeviceInfo,
    charset: Charset,
) -> Vec<u8> {
    let mut doc = Doc::new(charset, "Response", "DeviceInfo", sn, device_id);
    doc.opt("DeviceName", &info.device_name);
    doc.opt("Result", &info.result);
    doc.opt("Manufacturer", &info.manufacturer);
    doc.opt("Model", &info.model);
    doc.opt("Firmware", &info.firmware);
    doc.opt("Channel", &info.channel.map(|c| c.to_string()));
    doc.extras(&info.extra);
    doc.finish(charset)
}

/// A DeviceStatus `<Response>`: Result, Online, Status, Reason, Encode,
/// Record, DeviceTime, Alarmstatus (those present), extras last. The
/// whitespace-separated tokens of `alarm_status` become
/// `<Item><DeviceID/><DutyStatus/></Item>` pairs (see
/// [`DeviceStatus::alarm_status`]).
pub fn device_status_response(
    sn: u32,
    device_id: &str,
    status: &DeviceStatus,
    charset: Charset,
) -> Vec<u8> {
    let mut doc = Doc::new(charset, "Response", "DeviceStatus", sn, device_id);
    doc.opt("Result", &status.result);
    doc.opt("Online", &status.online);
    doc.opt("Status", &status.status);
    doc.opt("Reason", &status.reason);
    doc.opt("Encode", &status.encode);
    doc.opt("Record", &status.record);
    doc.opt("DeviceTime", &status.device_time);
    if let Some(alarm) = &status.alarm_status {
        let tokens: Vec<&str> = alarm.split_whitespace().collect();
        doc.open("Alarmstatus", Some(tokens.len().div_ceil(2)));
        for pair in tokens.chunks(2) {
            doc.open("Item", None);
            if let Some(id) = pair.first() {
                doc.leaf("DeviceID", id);
            }
            if let Some(duty) = pair.get(1) {
                doc.leaf("DutyStatus", duty);
            }
            doc.close("Item");
        }
        doc.close("Alarmstatus");
    }
    doc.extras(&status.extra);
    doc.finish(charset)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHARSETS: [Charset; 3] = [Charset::Gb2312, Charset::Gb18030, Charset::Utf8];

    /// Encodes `s` with encoding_rs's GBK encoder (what GB2312 devices send).
    fn gb(s: &str) -> Vec<u8> {
        let (bytes, _, unmappable) = GBK.encode(s);
        assert!(!unmappable);
        bytes.into_owned()
    }

    fn catalog_of(m: &Message) -> &Catalog {
        match &m.body {
            Body::Catalog(c) => c,
            other => panic!("not a catalog: {other:?}"),
        }
    }

    /// Deterministic xorshift for the garbage tests.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    fn sample_items() -> Vec<CatalogItem> {
        vec![
            CatalogItem {
                device_id: "34020000001320000001".into(),
                name: Some("前门摄像机".into()),
                manufacturer: Some("Hikvision".into()),
                model: Some("DS-2CD2T45".into()),
                owner: Some("Owner".into()),
                civil_code: Some("3402000000".into()),
                block: Some("A & B <区>".into()),
                address: Some("大门 \"东\" 'x'".into()),
                parental: Some("0".into()),
                parent_id: Some("34020000001110000001".into()),
                safety_way: Some("0".into()),
                register_way: Some("1".into()),
                cert_num: Some("c1".into()),
                certifiable: Some("0".into()),
                err_code: Some("400".into()),
                end_time: Some("2030-01-01T00:00:00".into()),
                secrecy: Some("0".into()),
                ip_address: Some("192.168.1.64".into()),
                port: Some("5060".into()),
                password: Some("p@ss&word".into()),
                status: Some("ON".into()),
                longitude: Some("117.2".into()),
                latitude: Some("31.8".into()),
                security_level_code: Some("A".into()),
                business_group_id: Some("34020000002150000001".into()),
                ptz_type: Some("1".into()),
                extra: vec![
                    ("PositionType".into(), "1".into()),
                    ("Custom".into(), "自定义".into()),
                ],
            },
            CatalogItem {
                device_id: "34020000001320000002".into(),
                name: Some("后门".into()),
                status: Some("OFF".into()),
                ..CatalogItem::default()
            },
            CatalogItem {
                device_id: "34020000001320000003".into(),
                ..CatalogItem::default()
            },
        ]
    }

    // ----- decoding -----------------------------------------------------

    #[test]
    fn decode_declared_and_fallback() {
        let (t, e) = decode(b"<?xml version=\"1.0\" encoding=\"UTF-8\"?><a/>").unwrap();
        assert_eq!(
            (t.as_str(), e),
            ("<?xml version=\"1.0\" encoding=\"UTF-8\"?><a/>", UTF_8)
        );
        let mut body = b"<?xml version='1.0' encoding='gb2312'?><a>".to_vec();
        body.extend(gb("中文"));
        body.extend(b"</a>");
        let (t, e, lossy) = decode_checked(&body).unwrap();
        assert!(t.contains("<a>中文</a>"));
        assert_eq!(e, GBK);
        assert!(!lossy);
        // GB18030 and GBK labels.
        for (label, enc) in [("GB18030", GB18030), ("gbk", GBK), ("x-gbk", GBK)] {
            let body = format!("<?xml version=\"1.0\" encoding=\"{label}\"?><a/>");
            assert_eq!(decode(body.as_bytes()).unwrap().1, enc, "{label}");
        }
        // No declaration: UTF-8 when valid, GB18030 otherwise.
        assert_eq!(decode("<a>中文</a>".as_bytes()).unwrap().1, UTF_8);
        let mut body = b"<a>".to_vec();
        body.extend(gb("中文"));
        body.extend(b"</a>");
        let (t, e, lossy) = decode_checked(&body).unwrap();
        assert_eq!((t.as_str(), e, lossy), ("<a>中文</a>", GB18030, false));
        // A declaration without encoding is like no declaration.
        assert_eq!(decode(b"<?xml version=\"1.0\"?><a/>").unwrap().1, UTF_8);
        // BOM skipped.
        let (t, e) = decode(b"\xEF\xBB\xBF<?xml version=\"1.0\" encoding=\"UTF-8\"?><a/>").unwrap();
        assert!(t.starts_with("<?xml"));
        assert_eq!(e, UTF_8);
        // Sloppy spacing and unquoted value.
        assert_eq!(
            decode(b"  <?XML version=\"1.0\" ENCODING = GBK ?><a/>")
                .unwrap()
                .1,
            GBK
        );
    }

    #[test]
    fn decode_malformed_bytes_are_flagged_not_fatal() {
        let (t, e, lossy) =
            decode_checked(b"<?xml version=\"1.0\" encoding=\"UTF-8\"?><a>\xFF\xFE</a>").unwrap();
        assert_eq!(e, UTF_8);
        assert!(lossy);
        assert!(t.contains('\u{FFFD}'));
        // A lone GB lead byte before '<'.
        let (t, e, lossy) =
            decode_checked(b"<?xml version=\"1.0\" encoding=\"GB2312\"?><a>\x81</a>").unwrap();
        assert_eq!(e, GBK);
        assert!(lossy);
        assert!(t.contains('\u{FFFD}'));
        let m = parse(
            b"<?xml version=\"1.0\" encoding=\"GB2312\"?><Notify><CmdType>Keepalive</CmdType>\
              <SN>1</SN><DeviceID>x\xFF</DeviceID></Notify>",
        )
        .unwrap();
        assert!(m.lossy);
        assert_eq!(m.device_id, "x\u{FFFD}");
    }

    #[test]
    fn decode_errors() {
        let e = decode(b"<?xml version=\"1.0\" encoding=\"KLINGON-8\"?><a/>").unwrap_err();
        assert!(matches!(e, Error::Encoding(_)), "{e:?}");
        assert_eq!(e.reason(), "encoding");
        let e = decode(b"<?xml version=\"1.0\" encoding=\"UTF-16\"?><a/>").unwrap_err();
        assert!(matches!(e, Error::Encoding(_)), "{e:?}");
        let e = decode(b"<?xml version=\"1.0\" encoding=\"\xFF\xFE\"?><a/>").unwrap_err();
        assert!(matches!(e, Error::Encoding(_)), "{e:?}");
        let big = vec![b' '; MAX_BODY + 1];
        let e = decode(&big).unwrap_err();
        assert!(matches!(e, Error::TooLarge(n) if n == MAX_BODY + 1));
        assert_eq!(e.reason(), "too_large");
        assert!(matches!(parse(&big), Err(Error::TooLarge(_))));
    }

    // ----- parsing: realistic documents ---------------------------------

    #[test]
    fn hikvision_keepalive() {
        let body = b"<?xml version=\"1.0\" encoding=\"GB2312\"?>\r\n\
            <Notify>\r\n\
            <CmdType>Keepalive</CmdType>\r\n\
            <SN>2387</SN>\r\n\
            <DeviceID>34020000001320000001</DeviceID>\r\n\
            <Status>OK</Status>\r\n\
            </Notify>\r\n";
        let m = parse(body).unwrap();
        assert_eq!(
            m,
            Message {
                kind: Kind::Notify,
                cmd_type: "Keepalive".into(),
                sn: 2387,
                device_id: "34020000001320000001".into(),
                body: Body::Keepalive {
                    status: Some("OK".into()),
                    faulty: vec![]
                },
                encoding: GBK,
                lossy: false,
            }
        );
        assert_eq!(Charset::for_encoding(m.encoding), Charset::Gb2312);
    }

    #[test]
    fn keepalive_2022_with_faulty_list() {
        let body = "<?xml version=\"1.0\" encoding=\"GB18030\"?>\n\
            <Notify>\n  <CmdType>Keepalive</CmdType>\n  <SN> 43 </SN>\n\
              <DeviceID> 34020000001110000001 </DeviceID>\n  <Status>OK</Status>\n\
              <Info>\n    <DeviceID>34020000001320000005</DeviceID>\n\
                <DeviceID>34020000001320000009</DeviceID>\n    <DeviceID/>\n  </Info>\n\
            </Notify>\n";
        let m = parse(body.as_bytes()).unwrap();
        assert_eq!(m.sn, 43);
        assert_eq!(m.device_id, "34020000001110000001");
        assert_eq!(m.encoding, GB18030);
        assert_eq!(
            m.body,
            Body::Keepalive {
                status: Some("OK".into()),
                faulty: vec!["34020000001320000005".into(), "34020000001320000009".into()],
            }
        );
    }

    fn gb2312_catalog_bytes() -> Vec<u8> {
        let xml = "<?xml version=\"1.0\" encoding=\"GB2312\"?>\r\n\
            <Response>\r\n<CmdType>Catalog</CmdType>\r\n<SN>17</SN>\r\n\
            <DeviceID>34020000001110000001</DeviceID>\r\n<SumNum>4</SumNum>\r\n\
            <DeviceList Num=\"3\">\r\n\
            <Item>\r\n<DeviceID>34020000001320000001</DeviceID>\r\n<Name>前门摄像机</Name>\r\n\
            <Manufacturer>海康威视</Manufacturer>\r\n<Model>IP Camera</Model>\r\n\
            <Owner>Owner</Owner>\r\n<CivilCode>3402000000</CivilCode>\r\n\
            <Address>一号楼 大厅</Address>\r\n<Parental>0</Parental>\r\n\
            <ParentID>34020000001110000001</ParentID>\r\n<SafetyWay>0</SafetyWay>\r\n\
            <RegisterWay>1</RegisterWay>\r\n<Secrecy>0</Secrecy>\r\n\
            <Status>ON</Status>\r\n<Longitude>0.0</Longitude>\r\n<Latitude>0.0</Latitude>\r\n\
            <Info>\r\n<PTZType>1</PTZType>\r\n<Resolution>6/4/2</Resolution>\r\n</Info>\r\n\
            <Event>ADD</Event>\r\n</Item>\r\n\
            <Item>\r\n<DeviceID>34020000001320000002</DeviceID>\r\n<Name>后门 通道2</Name>\r\n\
            <Status>OFF</Status>\r\n</Item>\r\n\
            <Item>\r\n<Name>没有编号</Name>\r\n</Item>\r\n\
            </DeviceList>\r\n</Response>\r\n";
        gb(xml)
    }

    #[test]
    fn gb2312_catalog() {
        let body = gb2312_catalog_bytes();
        assert!(std::str::from_utf8(&body).is_err(), "must be GB bytes");
        let m = parse(&body).unwrap();
        assert_eq!(
            (m.kind, m.sn, m.encoding, m.lossy),
            (Kind::Response, 17, GBK, false)
        );
        assert_eq!(m.device_id, "34020000001110000001");
        let c = catalog_of(&m);
        assert_eq!((c.sum_num, c.skipped, c.items.len()), (4, 1, 2));
        let a = &c.items[0];
        assert_eq!(a.device_id, "34020000001320000001");
        assert_eq!(a.name.as_deref(), Some("前门摄像机"));
        assert_eq!(a.manufacturer.as_deref(), Some("海康威视"));
        assert_eq!(a.address.as_deref(), Some("一号楼 大厅"));
        assert_eq!(a.ptz_type.as_deref(), Some("1"));
        assert_eq!(a.status.as_deref(), Some("ON"));
        assert_eq!(a.block, None);
        assert_eq!(
            a.extra,
            vec![
                ("Resolution".to_string(), "6/4/2".to_string()),
                ("Event".to_string(), "ADD".to_string())
            ]
        );
        assert_eq!(c.items[1].name.as_deref(), Some("后门 通道2"));
        assert_eq!(c.items[1].status.as_deref(), Some("OFF"));
    }

    #[test]
    fn catalog_without_declaration_but_gb_bytes() {
        let body = gb2312_catalog_bytes();
        let start = body.iter().position(|&b| b == b'\n').unwrap() + 1;
        let m = parse(&body[start..]).unwrap();
        assert_eq!(m.encoding, GB18030);
        assert!(!m.lossy);
        assert_eq!(catalog_of(&m).items[0].name.as_deref(), Some("前门摄像机"));
    }

    #[test]
    fn utf8_catalog() {
        let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\
            <Response><CmdType>Catalog</CmdType><SN>9</SN><DeviceID>34020000001110000001</DeviceID>\
            <SumNum>2</SumNum><DeviceList Num=\"2\">\
            <Item><DeviceID>34020000001310000001</DeviceID><Name>侧门</Name>\
            <SecurityLevelCode>B</SecurityLevelCode><PTZType>3</PTZType>\
            <BusinessGroupID>34020000002150000001</BusinessGroupID></Item>\
            <Item><DeviceID>34020000001310000002</DeviceID><Name><![CDATA[a<b>]]></Name></Item>\
            </DeviceList></Response>";
        let m = parse(body.as_bytes()).unwrap();
        assert_eq!(m.encoding, UTF_8);
        let c = catalog_of(&m);
        assert_eq!((c.sum_num, c.skipped), (2, 0));
        assert_eq!(c.items[0].name.as_deref(), Some("侧门"));
        assert_eq!(c.items[0].security_level_code.as_deref(), Some("B"));
        assert_eq!(c.items[0].ptz_type.as_deref(), Some("3"));
        assert_eq!(
            c.items[0].business_group_id.as_deref(),
            Some("34020000002150000001")
        );
        assert_eq!(c.items[1].name.as_deref(), Some("a<b>"));
    }

    #[test]
    fn empty_catalog() {
        for list in [
            "",
            "<DeviceList Num=\"0\"/>",
            "<DeviceList Num=\"0\">\r\n</DeviceList>",
        ] {
            let body = format!(
                "<Response><CmdType>Catalog</CmdType><SN>3</SN><DeviceID>1</DeviceID>\
                 <SumNum>0</SumNum>{list}</Response>"
            );
            let m = parse(body.as_bytes()).unwrap();
            assert_eq!(m.body, Body::Catalog(Catalog::default()), "{list}");
        }
    }

    #[test]
    fn device_info_response_parses() {
        let body = "<?xml version=\"1.0\" encoding=\"GB2312\"?>\r\n<Response>\r\n\
            <CmdType>DeviceInfo</CmdType>\r\n<SN>5</SN>\r\n<DeviceID>34020000001320000001</DeviceID>\r\n\
            <Result>OK</Result>\r\n<DeviceName>IP CAMERA</DeviceName>\r\n\
            <Manufacturer>Hikvision</Manufacturer>\r\n<Model>DS-2DE2204IW-DE3</Model>\r\n\
            <Firmware>V5.5.800</Firmware>\r\n<Channel>1</Channel>\r\n<MaxAlarm>2</MaxAlarm>\r\n</Response>\r\n";
        let m = parse(body.as_bytes()).unwrap();
        assert_eq!(
            m.body,
            Body::DeviceInfo(DeviceInfo {
                result: Some("OK".into()),
                device_name: Some("IP CAMERA".into()),
                manufacturer: Some("Hikvision".into()),
                model: Some("DS-2DE2204IW-DE3".into()),
                firmware: Some("V5.5.800".into()),
                channel: Some(1),
                extra: vec![("MaxAlarm".into(), "2".into())],
            })
        );
        // A non-numeric channel is kept in extra.
        let body = "<Response><CmdType>DeviceInfo</CmdType><SN>5</SN><DeviceID>1</DeviceID>\
            <Channel>two</Channel></Response>";
        match parse(body.as_bytes()).unwrap().body {
            Body::DeviceInfo(i) => {
                assert_eq!(i.channel, None);
                assert_eq!(i.extra, vec![("Channel".into(), "two".into())]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn device_status_response_parses() {
        let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response>\n\
            <CmdType>DeviceStatus</CmdType>\n<SN>6</SN>\n<DeviceID>34020000001320000001</DeviceID>\n\
            <Result>OK</Result>\n<Online>ONLINE</Online>\n<Status>OK</Status>\n\
            <Encode>ON</Encode>\n<Record>OFF</Record>\n<DeviceTime>2024-05-01T10:00:00</DeviceTime>\n\
            <Alarmstatus Num=\"2\">\n<Item>\n<DeviceID>34020000001340000001</DeviceID>\n\
            <DutyStatus>ONDUTY</DutyStatus>\n</Item>\n<Item>\n<DeviceID>34020000001340000002</DeviceID>\n\
            <DutyStatus>ALARM</DutyStatus>\n</Item>\n</Alarmstatus>\n<Foo>bar</Foo>\n</Response>\n";
        let m = parse(body.as_bytes()).unwrap();
        assert_eq!(
            m.body,
            Body::DeviceStatus(DeviceStatus {
                result: Some("OK".into()),
                online: Some("ONLINE".into()),
                status: Some("OK".into()),
                encode: Some("ON".into()),
                record: Some("OFF".into()),
                device_time: Some("2024-05-01T10:00:00".into()),
                alarm_status: Some("34020000001340000001 ONDUTY 34020000001340000002 ALARM".into()),
                reason: None,
                extra: vec![("Foo".into(), "bar".into())],
            })
        );
    }

    #[test]
    fn media_status_and_other() {
        let m = parse(
            b"<Notify><CmdType>MediaStatus</CmdType><SN>8</SN><DeviceID>1</DeviceID>\
              <NotifyType>121</NotifyType></Notify>",
        )
        .unwrap();
        assert_eq!(
            m.body,
            Body::MediaStatus {
                notify_type: "121".into()
            }
        );
        let e = parse(
            b"<Notify><CmdType>MediaStatus</CmdType><SN>8</SN><DeviceID>1</DeviceID></Notify>",
        )
        .unwrap_err();
        assert!(matches!(e, Error::Missing("NotifyType")), "{e:?}");

        let m = parse(
            b"<Control><CmdType>DeviceControl</CmdType><SN>11</SN><DeviceID>1</DeviceID>\
              <PTZCmd>A50F01021F0000D6</PTZCmd><Info><ControlPriority>5</ControlPriority></Info></Control>",
        )
        .unwrap();
        assert_eq!(m.kind, Kind::Control);
        assert_eq!(
            m.body,
            Body::Other(vec![
                ("CmdType".into(), "DeviceControl".into()),
                ("SN".into(), "11".into()),
                ("DeviceID".into(), "1".into()),
                ("PTZCmd".into(), "A50F01021F0000D6".into()),
            ])
        );
        // A Query is Other too, as is a Catalog that is not a Response.
        let m = parse(&query("Catalog", 1, "dev", Charset::Utf8)).unwrap();
        assert_eq!(m.kind, Kind::Query);
        assert!(matches!(m.body, Body::Other(ref v) if v.len() == 3));
    }

    #[test]
    fn case_variant_tags() {
        let body = b"<?xml version=\"1.0\" encoding=\"GB2312\"?>\
            <response><cmdtype>catalog</CMDTYPE><sn>4</Sn><deviceid>abc</DeviceId>\
            <sumnum>1</SUMNUM><devicelist num=\"1\"><item><deviceID>d1</deviceid>\
            <name>N</NAME><ipaddress>1.2.3.4</IPADDRESS><info><ptztype>2</ptztype></info>\
            </ITEM></DEVICELIST></RESPONSE>";
        let m = parse(body).unwrap();
        assert_eq!(m.kind, Kind::Response);
        assert_eq!(m.cmd_type, "catalog");
        assert_eq!((m.sn, m.device_id.as_str()), (4, "abc"));
        let c = catalog_of(&m);
        assert_eq!(c.items.len(), 1);
        assert_eq!(c.items[0].device_id, "d1");
        assert_eq!(c.items[0].name.as_deref(), Some("N"));
        assert_eq!(c.items[0].ip_address.as_deref(), Some("1.2.3.4"));
        assert_eq!(c.items[0].ptz_type.as_deref(), Some("2"));

        let m =
            parse(b"<NOTIFY><Cmdtype>Keepalive</Cmdtype><SN>1</SN><DeviceID>x</DeviceID></NOTIFY>")
                .unwrap();
        assert_eq!(m.kind, Kind::Notify);
        assert_eq!(
            m.body,
            Body::Keepalive {
                status: None,
                faulty: vec![]
            }
        );
    }

    #[test]
    fn unescaped_ampersand_and_entities_in_text() {
        let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response><CmdType>Catalog</CmdType>\
            <SN>1</SN><DeviceID>1</DeviceID><SumNum>5</SumNum><DeviceList Num=\"5\">\
            <Item><DeviceID>a</DeviceID><Name>Tom & Jerry 门</Name></Item>\
            <Item><DeviceID>b</DeviceID><Name>R&D</Name></Item>\
            <Item><DeviceID>c</DeviceID><Name>R&D; lab&nbsp;1</Name></Item>\
            <Item><DeviceID>d</DeviceID><Name>&lt;x&gt; &amp; &quot;&apos; &#x41;&#66;</Name></Item>\
            <Item><DeviceID>e</DeviceID><Name>bad &#0; &#xZZ; &</Name></Item>\
            </DeviceList></Response>";
        let m = parse(body.as_bytes()).unwrap();
        let names: Vec<_> = catalog_of(&m)
            .items
            .iter()
            .map(|i| i.name.clone().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "Tom & Jerry 门",
                "R&D",
                "R&D; lab&nbsp;1",
                "<x> & \"' AB",
                "bad &#0; &#xZZ; &"
            ]
        );
    }

    #[test]
    fn lowercase_single_quoted_gb2312() {
        let mut body = b"<?xml version='1.0' encoding='gb2312'?>\n".to_vec();
        body.extend(gb(
            "<Response><CmdType>DeviceInfo</CmdType><SN>2</SN><DeviceID>1</DeviceID>\
             <DeviceName>北门球机</DeviceName><Result>OK</Result></Response>",
        ));
        let m = parse(&body).unwrap();
        assert_eq!(m.encoding, GBK);
        match m.body {
            Body::DeviceInfo(i) => assert_eq!(i.device_name.as_deref(), Some("北门球机")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn leading_whitespace_and_bom_before_declaration() {
        for prefix in [&b"\r\n  "[..], b"\xEF\xBB\xBF", b"\xEF\xBB\xBF\n"] {
            let mut body = prefix.to_vec();
            body.extend(gb("<?xml version=\"1.0\" encoding=\"GB2312\"?>\r\n<Notify><CmdType>Keepalive</CmdType>\
                 <SN>1</SN><DeviceID>摄像机</DeviceID></Notify>"));
            let m = parse(&body).unwrap();
            assert_eq!((m.encoding, m.device_id.as_str()), (GBK, "摄像机"));
        }
    }

    #[test]
    fn namespaces_comments_and_doctype_are_tolerated() {
        let body = b"<?xml version=\"1.0\"?>\n<!DOCTYPE Notify>\n<!-- hi -->\n\
            <m:Notify xmlns:m=\"urn:x\"><m:CmdType>Keepalive</m:CmdType><!-- c --><SN>7</SN>\
            <DeviceID>z</DeviceID></m:Notify>\n<!-- trailing -->\n";
        let m = parse(body).unwrap();
        assert_eq!((m.kind, m.sn), (Kind::Notify, 7));
    }

    // ----- parsing: errors -----------------------------------------------

    fn err(body: &[u8]) -> Error {
        match parse(body) {
            Err(e) => e,
            Ok(m) => panic!("parsed: {m:?}"),
        }
    }

    #[test]
    fn missing_and_bad_fields() {
        let e = err(b"<Notify><CmdType>Keepalive</CmdType><DeviceID>1</DeviceID></Notify>");
        assert!(matches!(e, Error::Missing("SN")), "{e:?}");
        assert_eq!(e.reason(), "missing_field");
        let e = err(b"<Notify><CmdType>Keepalive</CmdType><SN/><DeviceID>1</DeviceID></Notify>");
        assert!(matches!(e, Error::Missing("SN")), "{e:?}");
        let e =
            err(b"<Notify><CmdType>Keepalive</CmdType><SN>12a</SN><DeviceID>1</DeviceID></Notify>");
        assert!(
            matches!(e, Error::BadValue { field: "SN", ref value } if value == "12a"),
            "{e:?}"
        );
        assert_eq!(e.reason(), "bad_value");
        let e = err(b"<Notify><CmdType>Keepalive</CmdType><SN>4294967296</SN><DeviceID>1</DeviceID></Notify>");
        assert!(matches!(e, Error::BadValue { field: "SN", .. }), "{e:?}");
        let e =
            err(b"<Notify><CmdType>Keepalive</CmdType><SN>-1</SN><DeviceID>1</DeviceID></Notify>");
        assert!(matches!(e, Error::BadValue { field: "SN", .. }), "{e:?}");
        let e = err(b"<Notify><SN>1</SN><DeviceID>1</DeviceID></Notify>");
        assert!(matches!(e, Error::Missing("CmdType")), "{e:?}");
        let e = err(b"<Notify><CmdType> </CmdType><SN>1</SN><DeviceID>1</DeviceID></Notify>");
        assert!(matches!(e, Error::Missing("CmdType")), "{e:?}");
        let e = err(b"<Notify><CmdType>Keepalive</CmdType><SN>1</SN></Notify>");
        assert!(matches!(e, Error::Missing("DeviceID")), "{e:?}");
        let e =
            err(b"<Response><CmdType>Catalog</CmdType><SN>1</SN><DeviceID>1</DeviceID></Response>");
        assert!(matches!(e, Error::Missing("SumNum")), "{e:?}");
        let e = err(b"<Response><CmdType>Catalog</CmdType><SN>1</SN><DeviceID>1</DeviceID><SumNum>x</SumNum></Response>");
        assert!(
            matches!(
                e,
                Error::BadValue {
                    field: "SumNum",
                    ..
                }
            ),
            "{e:?}"
        );
        let e =
            err(b"<Request><CmdType>Catalog</CmdType><SN>1</SN><DeviceID>1</DeviceID></Request>");
        assert!(matches!(e, Error::BadValue { field: "root", .. }), "{e:?}");
        // Long bad values are truncated.
        let long = format!(
            "<Notify><CmdType>K</CmdType><SN>{}</SN><DeviceID>1</DeviceID></Notify>",
            "9".repeat(1000)
        );
        match err(long.as_bytes()) {
            Error::BadValue { value, .. } => assert_eq!(value.len(), MAX_ERR_VALUE),
            e => panic!("{e:?}"),
        }
    }

    #[test]
    fn broken_xml() {
        for body in [
            &b"<Notify><CmdType>Keepalive</SN></Notify>"[..],
            b"<Notify><CmdType>Keepalive</CmdType><SN>1</SN><DeviceID>1</DeviceID>",
            b"<Notify><CmdType>Keepalive</CmdType><SN>1</SN><DeviceID>1</DeviceID></Notify></Notify>",
            b"<Notify><SN>1</SN></Notify><Notify/>",
            b"junk<Notify><CmdType>K</CmdType><SN>1</SN><DeviceID>1</DeviceID></Notify>",
            b"<Notify><CmdType>K</CmdType><SN>1</SN><DeviceID>1</DeviceID></Notify>junk",
            b"<Notify><CmdType>K</CmdType><SN>1</SN><DeviceID>1</DeviceID></Notify>&amp;",
            b"<Notify><CmdType>1<2</CmdType></Notify>",
            b"",
            b"   \r\n ",
            b"<?xml version=\"1.0\"?>",
            b"<!-- only a comment -->",
            b"plain text",
            b"<Notify",
            b"</Notify>",
        ] {
            let e = err(body);
            assert!(matches!(e, Error::Xml(_)), "{:?}: {e:?}", String::from_utf8_lossy(body));
            assert_eq!(e.reason(), "xml");
        }
    }

    #[test]
    fn depth_bomb() {
        let ok = format!("{}{}", "<a>".repeat(MAX_DEPTH), "</a>".repeat(MAX_DEPTH));
        assert!(!matches!(parse(ok.as_bytes()), Err(Error::TooDeep)));
        for n in [MAX_DEPTH + 1, 100_000] {
            let bomb = format!("{}{}", "<a>".repeat(n), "</a>".repeat(n));
            let e = err(bomb.as_bytes());
            assert!(matches!(e, Error::TooDeep), "{e:?}");
            assert_eq!(e.reason(), "too_deep");
        }
        // Unclosed bomb too.
        assert!(matches!(
            err("<a>".repeat(200_000).as_bytes()),
            Error::TooDeep
        ));
        // Empty elements at the limit count as well.
        let bomb = format!(
            "{}<b/>{}",
            "<a>".repeat(MAX_DEPTH),
            "</a>".repeat(MAX_DEPTH)
        );
        assert!(matches!(err(bomb.as_bytes()), Error::TooDeep));
    }

    #[test]
    fn too_many_items() {
        let catalog = |n: usize| {
            let mut s = String::from(
                "<Response><CmdType>Catalog</CmdType><SN>1</SN><DeviceID>1</DeviceID>\
                 <SumNum>99999</SumNum><DeviceList>",
            );
            for i in 0..n {
                s.push_str(&format!("<Item><DeviceID>{i}</DeviceID></Item>"));
            }
            s.push_str("</DeviceList></Response>");
            s
        };
        let m = parse(catalog(MAX_ITEMS).as_bytes()).unwrap();
        assert_eq!(catalog_of(&m).items.len(), MAX_ITEMS);
        let e = err(catalog(MAX_ITEMS + 1).as_bytes());
        assert!(matches!(e, Error::TooManyItems), "{e:?}");
        assert_eq!(e.reason(), "too_many_items");
        // Empty items count, and elements of any name are bounded too.
        let e = err(format!("<r>{}</r>", "<item/>".repeat(MAX_ITEMS + 1)).as_bytes());
        assert!(matches!(e, Error::TooManyItems), "{e:?}");
        let e = err(format!("<r>{}</r>", "<x/>".repeat(MAX_ELEMENTS)).as_bytes());
        assert!(matches!(e, Error::TooManyItems), "{e:?}");
    }

    #[test]
    fn unknown_encoding_label() {
        let e = err(b"<?xml version=\"1.0\" encoding=\"BIG-FIVE-ISH\"?><Notify/>");
        assert!(matches!(e, Error::Encoding(_)), "{e:?}");
    }

    #[test]
    fn garbage_never_panics() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let alphabet: &[&[u8]] = &[
            b"<",
            b">",
            b"/",
            b"&",
            b";",
            b"\"",
            b"'",
            b"=",
            b"?",
            b"!",
            b"[",
            b"]",
            b"-",
            b"<?xml version=\"1.0\" encoding=\"GB2312\"?>",
            b"<Notify>",
            b"</Notify>",
            b"<Response>",
            b"<CmdType>",
            b"Catalog",
            b"</CmdType>",
            b"<SN>",
            b"</SN>",
            b"1",
            b"<DeviceID>",
            b"</DeviceID>",
            b"<SumNum>",
            b"<DeviceList>",
            b"<Item>",
            b"</Item>",
            b"<Info>",
            b"<![CDATA[",
            b"]]>",
            b"<!--",
            b"-->",
            b"&#x",
            b"\xFF",
            b"\x81",
            b"\xEF\xBB\xBF",
            b" ",
            b"\r\n",
            b"\0",
        ];
        for _ in 0..3000 {
            let len = rng.below(300);
            let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            let _ = parse(&bytes);
            let mut tokens = Vec::new();
            for _ in 0..rng.below(60) {
                tokens.extend_from_slice(alphabet[rng.below(alphabet.len())]);
            }
            let _ = parse(&tokens);
        }
    }

    #[test]
    fn every_prefix_and_mutation_is_safe() {
        let mut bodies = vec![
            gb2312_catalog_bytes(),
            catalog_response(1, "d", 3, &sample_items(), Charset::Utf8),
            device_status_response(
                2,
                "d",
                &DeviceStatus {
                    alarm_status: Some("a ONDUTY".into()),
                    ..DeviceStatus::default()
                },
                Charset::Gb18030,
            ),
        ];
        bodies.push(keepalive(3, "设备", Charset::Gb2312));
        let mut rng = Rng(42);
        for body in &bodies {
            assert!(parse(body).is_ok());
            for end in 0..body.len() {
                let _ = parse(&body[..end]);
                let _ = parse(&body[end..]);
            }
            for _ in 0..500 {
                let mut m = body.clone();
                for _ in 0..=rng.below(4) {
                    let i = rng.below(m.len());
                    m[i] = rng.next() as u8;
                }
                let _ = parse(&m);
            }
        }
    }

    // ----- building -------------------------------------------------------

    #[test]
    fn query_exact_shape() {
        assert_eq!(
            query("Catalog", 17, "34020000001320000001", Charset::Gb2312),
            b"<?xml version=\"1.0\" encoding=\"GB2312\"?>\r\n<Query>\r\n<CmdType>Catalog</CmdType>\r\n\
              <SN>17</SN>\r\n<DeviceID>34020000001320000001</DeviceID>\r\n</Query>\r\n"
        );
        assert_eq!(
            query("Device<Info>", 0, "a&b\"'", Charset::Utf8),
            b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\r\n<Query>\r\n\
              <CmdType>Device&lt;Info&gt;</CmdType>\r\n<SN>0</SN>\r\n\
              <DeviceID>a&amp;b&quot;&apos;</DeviceID>\r\n</Query>\r\n"
        );
        let q = query("DeviceStatus", 1, "x", Charset::Gb18030);
        assert!(q.starts_with(b"<?xml version=\"1.0\" encoding=\"GB18030\"?>\r\n<Query>\r\n"));
        // Control characters XML cannot carry are dropped.
        let q = query("A\u{1}B", 1, "x", Charset::Utf8);
        assert!(q.windows(20).any(|w| w == b"<CmdType>AB</CmdType"));
    }

    #[test]
    fn chinese_is_gb2312_on_the_wire() {
        let items = vec![CatalogItem {
            device_id: "34020000001320000001".into(),
            name: Some("前门摄像机".into()),
            ..CatalogItem::default()
        }];
        let body = catalog_response(1, "p", 1, &items, Charset::Gb2312);
        let name = gb("<Name>前门摄像机</Name>");
        assert!(body.windows(name.len()).any(|w| w == name.as_slice()));
        assert!(std::str::from_utf8(&body).is_err());
        let body = catalog_response(1, "p", 1, &items, Charset::Utf8);
        let name = "<Name>前门摄像机</Name>".as_bytes();
        assert!(body.windows(name.len()).any(|w| w == name));
        // A character outside GBK becomes a character reference and survives.
        let items = vec![CatalogItem {
            device_id: "1".into(),
            name: Some("cam 🎥".into()),
            ..CatalogItem::default()
        }];
        let m = parse(&catalog_response(1, "p", 1, &items, Charset::Gb2312)).unwrap();
        assert_eq!(catalog_of(&m).items[0].name.as_deref(), Some("cam 🎥"));
    }

    #[test]
    fn catalog_builder_layout() {
        let body = catalog_response(5, "plat", 3, &sample_items(), Charset::Utf8);
        let text = String::from_utf8(body).unwrap();
        assert!(text.contains("<SumNum>3</SumNum>\r\n<DeviceList Num=\"3\">\r\n<Item>\r\n<DeviceID>34020000001320000001</DeviceID>\r\n<Name>前门摄像机</Name>\r\n"));
        assert!(text.contains(
            "<Latitude>31.8</Latitude>\r\n<SecurityLevelCode>A</SecurityLevelCode>\r\n\
             <BusinessGroupID>34020000002150000001</BusinessGroupID>\r\n\
             <Info>\r\n<PTZType>1</PTZType>\r\n</Info>\r\n<PositionType>1</PositionType>\r\n"
        ));
        assert!(text.contains("<Block>A &amp; B &lt;区&gt;</Block>"));
        assert!(text.ends_with("</Item>\r\n</DeviceList>\r\n</Response>\r\n"));
        // Empty catalog: no DeviceList; items without an ID are dropped.
        let text = String::from_utf8(catalog_response(5, "p", 0, &[], Charset::Utf8)).unwrap();
        assert!(!text.contains("DeviceList"));
        let items = [CatalogItem::default(), sample_items()[2].clone()];
        let text = String::from_utf8(catalog_response(5, "p", 2, &items, Charset::Utf8)).unwrap();
        assert!(text.contains("<DeviceList Num=\"1\">"));
        // Extras with names that are not XML names are not written.
        let mut item = sample_items()[2].clone();
        item.extra = vec![("bad name".into(), "x".into()), ("<x".into(), "y".into())];
        let text = String::from_utf8(catalog_response(5, "p", 1, &[item], Charset::Utf8)).unwrap();
        assert!(!text.contains("bad") && !text.contains("<x"));
    }

    #[test]
    fn round_trip_keepalive_and_query() {
        for cs in CHARSETS {
            let m = parse(&keepalive(u32::MAX, "34020000001320000001", cs)).unwrap();
            assert_eq!(
                m,
                Message {
                    kind: Kind::Notify,
                    cmd_type: "Keepalive".into(),
                    sn: u32::MAX,
                    device_id: "34020000001320000001".into(),
                    body: Body::Keepalive {
                        status: Some("OK".into()),
                        faulty: vec![]
                    },
                    encoding: cs.encoding(),
                    lossy: false,
                }
            );
            assert_eq!(Charset::for_encoding(m.encoding), cs);
            for cmd in ["Catalog", "DeviceInfo", "DeviceStatus"] {
                let m = parse(&query(cmd, 17, "设备&1", cs)).unwrap();
                assert_eq!((m.kind, m.cmd_type.as_str(), m.sn), (Kind::Query, cmd, 17));
                assert_eq!(m.device_id, "设备&1");
                assert_eq!(m.encoding, cs.encoding());
            }
        }
    }

    #[test]
    fn round_trip_catalog() {
        for cs in CHARSETS {
            for items in [sample_items(), vec![]] {
                let body = catalog_response(99, "34020000002000000001", 7, &items, cs);
                let m = parse(&body).unwrap();
                assert_eq!(m.kind, Kind::Response);
                assert_eq!((m.sn, m.device_id.as_str()), (99, "34020000002000000001"));
                assert_eq!((m.encoding, m.lossy), (cs.encoding(), false));
                assert_eq!(
                    m.body,
                    Body::Catalog(Catalog {
                        sum_num: 7,
                        skipped: 0,
                        items
                    })
                );
            }
        }
    }

    #[test]
    fn round_trip_device_info_and_status() {
        let infos = [
            DeviceInfo::default(),
            DeviceInfo {
                result: Some("OK".into()),
                device_name: Some("南门 NVR".into()),
                manufacturer: Some("大华".into()),
                model: Some("M<1>".into()),
                firmware: Some("V1 & V2".into()),
                channel: Some(64),
                extra: vec![("MaxCamera".into(), "64".into())],
            },
        ];
        let statuses = [
            DeviceStatus::default(),
            DeviceStatus {
                result: Some("OK".into()),
                online: Some("ONLINE".into()),
                status: Some("ERROR".into()),
                encode: Some("ON".into()),
                record: Some("OFF".into()),
                device_time: Some("2024-05-01T10:00:00".into()),
                alarm_status: Some(
                    "34020000001340000001 ONDUTY 34020000001340000002 OFFDUTY".into(),
                ),
                reason: Some("硬盘故障".into()),
                extra: vec![("Custom".into(), "'q'".into())],
            },
            DeviceStatus {
                alarm_status: Some(String::new()),
                ..DeviceStatus::default()
            },
        ];
        for cs in CHARSETS {
            for info in &infos {
                let m = parse(&device_info_response(3, "dev", info, cs)).unwrap();
                assert_eq!(
                    (m.kind, m.sn, m.encoding),
                    (Kind::Response, 3, cs.encoding())
                );
                assert_eq!(m.body, Body::DeviceInfo(info.clone()));
            }
            for st in &statuses {
                let m = parse(&device_status_response(4, "dev", st, cs)).unwrap();
                assert_eq!(
                    (m.kind, m.sn, m.encoding),
                    (Kind::Response, 4, cs.encoding())
                );
                assert_eq!(m.body, Body::DeviceStatus(st.clone()));
            }
        }
    }

    #[test]
    fn charset_labels() {
        for cs in CHARSETS {
            let label = cs.label();
            assert_eq!(Encoding::for_label(label.as_bytes()), Some(cs.encoding()));
            assert_eq!(Charset::for_encoding(cs.encoding()), cs);
        }
        assert_eq!(
            Charset::for_encoding(encoding_rs::WINDOWS_1252),
            Charset::Utf8
        );
    }

    #[test]
    fn catalog_notify_carries_events() {
        let mut it = CatalogItem {
            device_id: "34020000001310000001".into(),
            status: Some("OFF".into()),
            ..CatalogItem::default()
        };
        it.extra.push(("Event".into(), "OFF".into()));
        let body = catalog_notify(7, "34020000002000000001", &[it], Charset::Utf8);
        let m = parse(&body).unwrap();
        assert_eq!(m.kind, Kind::Notify);
        assert_eq!(m.cmd_type, "Catalog");
        assert_eq!(m.sn, 7);
        let text = String::from_utf8(body).unwrap();
        assert!(text.contains("<SumNum>1</SumNum>"), "{text}");
        assert!(text.contains("<Event>OFF</Event>"), "{text}");
    }

    #[test]
    fn device_control_bodies_nest_and_parse_back() {
        use crate::control::Control;
        let left = Control::Ptz {
            pan: Some(crate::control::Pan::Left),
            tilt: None,
            zoom: None,
            speed: 0x1F,
            zoom_speed: 0,
        };
        let b = device_control(11, "34020000001310000001", &left, Charset::Gb2312).unwrap();
        let text = String::from_utf8(b.clone()).unwrap();
        assert!(
            text.contains(
                "<CmdType>DeviceControl</CmdType>\r\n<SN>11</SN>\r\n<DeviceID>34020000001310000001</DeviceID>\r\n\
                 <PTZCmd>A50F01021F0000D6</PTZCmd>\r\n<Info>\r\n<ControlPriority>5</ControlPriority>\r\n</Info>\r\n</Control>"
            ),
            "{text}"
        );
        let m = parse(&b).unwrap();
        assert_eq!(
            (m.kind, m.cmd_type.as_str(), m.sn),
            (Kind::Control, "DeviceControl", 11)
        );
        let Body::Other(leaves) = m.body else {
            panic!("{:?}", m.body)
        };
        assert!(leaves.contains(&("PTZCmd".into(), "A50F01021F0000D6".into())));
        assert_eq!(
            leaf_paths(&b).unwrap()[3..],
            [
                ("PTZCmd".to_string(), "A50F01021F0000D6".to_string()),
                ("Info/ControlPriority".to_string(), "5".to_string())
            ]
        );
        let drag = Control::DragZoom {
            zoom_in: false,
            length: 1920,
            width: 1080,
            mid_x: 100,
            mid_y: 200,
            length_x: 50,
            length_y: 40,
        };
        let text =
            String::from_utf8(device_control(3, "x", &drag, Charset::Utf8).unwrap()).unwrap();
        assert!(
            text.contains("<DragZoomOut>\r\n<Length>1920</Length>\r\n<Width>1080</Width>\r\n<MidPointX>100</MidPointX>\r\n<MidPointY>200</MidPointY>\r\n<LengthX>50</LengthX>\r\n<LengthY>40</LengthY>\r\n</DragZoomOut>"),
            "{text}"
        );
        let home = Control::HomePosition {
            enabled: true,
            reset_secs: 30,
            preset: 2,
        };
        let text =
            String::from_utf8(device_control(4, "x", &home, Charset::Utf8).unwrap()).unwrap();
        assert!(
            text.contains("<HomePosition>\r\n<Enabled>1</Enabled>\r\n<ResetTime>30</ResetTime>\r\n<PresetIndex>2</PresetIndex>\r\n</HomePosition>"),
            "{text}"
        );
        assert!(
            device_control(5, "x", &Control::TeleBoot { confirm: false }, Charset::Utf8).is_err()
        );
        let r = parse(&device_control_response(9, "x", true, Charset::Utf8)).unwrap();
        assert_eq!(
            (r.kind, r.cmd_type.as_str()),
            (Kind::Response, "DeviceControl")
        );
        assert!(
            matches!(r.body, Body::Other(ref l) if l.contains(&("Result".into(), "OK".into())))
        );
    }

    #[test]
    fn record_info_round_trips_and_bad_answers_are_refused() {
        let q = String::from_utf8(record_info_query(
            7,
            "34020000001310000001",
            "2026-12-07T00:00:00",
            "2026-12-07T23:59:59",
            "all",
            Charset::Utf8,
        ))
        .unwrap();
        assert!(q.contains("<CmdType>RecordInfo</CmdType>\r\n<SN>7</SN>\r\n<DeviceID>34020000001310000001</DeviceID>\r\n<StartTime>2026-12-07T00:00:00</StartTime>\r\n<EndTime>2026-12-07T23:59:59</EndTime>\r\n<Secrecy>0</Secrecy>\r\n<Type>all</Type>"), "{q}");
        let items: Vec<RecordItem> = (0..2)
            .map(|i| RecordItem {
                device_id: "34020000001310000001".into(),
                name: Some("前门".into()),
                file_path: Some(format!("/rec/{i}.ps")),
                start_time: format!("2026-12-07T0{i}:00:00"),
                end_time: format!("2026-12-07T0{i}:00:04"),
                record_type: Some("time".into()),
                file_size: Some("123456".into()),
                ..RecordItem::default()
            })
            .collect();
        let b = record_info_response(
            7,
            "34020000001310000001",
            Some("前门"),
            5,
            &items,
            Charset::Gb2312,
        );
        let m = parse(&b).unwrap();
        let Body::RecordInfo(r) = m.body else {
            panic!("{:?}", m.body)
        };
        assert_eq!((r.sum_num, r.name.as_deref()), (5, Some("前门")));
        assert_eq!(r.items, items);
        // Empty: SumNum 0 and no list.
        let m = parse(&record_info_response(8, "x", None, 0, &[], Charset::Utf8)).unwrap();
        assert!(matches!(m.body, Body::RecordInfo(ref r) if r.sum_num == 0 && r.items.is_empty()));
        // Unusable answers.
        for (body, why) in [
            ("<Response><CmdType>RecordInfo</CmdType><SN>1</SN><DeviceID>x</DeviceID></Response>", "SumNum"),
            ("<Response><CmdType>RecordInfo</CmdType><SN>1</SN><DeviceID>x</DeviceID><SumNum>many</SumNum></Response>", "SumNum"),
            ("<Response><CmdType>RecordInfo</CmdType><SN>1</SN><DeviceID>x</DeviceID><SumNum>1</SumNum><RecordList Num=\"1\"><Item><DeviceID>x</DeviceID><EndTime>t</EndTime></Item></RecordList></Response>", "StartTime"),
        ] {
            let e = parse(body.as_bytes()).unwrap_err();
            assert!(format!("{e:?}").contains(why), "{body}: {e:?}");
        }
    }

    #[test]
    fn alarms_round_trip_and_need_their_fields() {
        let a = Alarm {
            priority: "1".into(),
            method: "5".into(),
            time: "2026-12-07T10:00:00".into(),
            description: Some("移动侦测".into()),
            longitude: Some("116.3".into()),
            latitude: Some("39.9".into()),
            alarm_type: Some("2".into()),
        };
        let m = parse(&alarm_notify(
            3,
            "34020000001340000001",
            &a,
            Charset::Gb2312,
        ))
        .unwrap();
        assert_eq!((m.kind, m.cmd_type.as_str()), (Kind::Notify, "Alarm"));
        assert_eq!(m.body, Body::Alarm(a));
        let r = parse(&alarm_response(3, "34020000001340000001", Charset::Utf8)).unwrap();
        assert!(
            matches!(r.body, Body::Other(ref l) if l.contains(&("Result".into(), "OK".into())))
        );
        let e = parse(b"<Notify><CmdType>Alarm</CmdType><SN>1</SN><DeviceID>x</DeviceID><AlarmPriority>1</AlarmPriority><AlarmTime>t</AlarmTime></Notify>").unwrap_err();
        assert!(matches!(e, Error::Missing("AlarmMethod")), "{e:?}");
        // AlarmType at the root, as some devices put it.
        let m = parse(b"<Notify><CmdType>Alarm</CmdType><SN>1</SN><DeviceID>x</DeviceID><AlarmPriority>2</AlarmPriority><AlarmMethod>2</AlarmMethod><AlarmTime>t</AlarmTime><AlarmType>1</AlarmType></Notify>").unwrap();
        assert!(matches!(m.body, Body::Alarm(ref a) if a.alarm_type.as_deref() == Some("1")));
    }
}

#[cfg(test)]
mod subscription_tests {
    use super::*;

    #[test]
    fn mobile_position_round_trip_and_bad_values() {
        let p = MobilePosition {
            time: "2026-12-07T10:00:00".into(),
            longitude: 116.397128,
            latitude: 39.916527,
            speed: Some(36.5),
            direction: Some(90.0),
            altitude: None,
        };
        let body = mobile_position_notify(7, "34020000001320000001", &p, Charset::Gb2312);
        let text = String::from_utf8(body.clone()).unwrap();
        assert!(
            text.contains("<CmdType>MobilePosition</CmdType>\r\n<SN>7</SN>\r\n<DeviceID>34020000001320000001</DeviceID>\r\n<Time>2026-12-07T10:00:00</Time>\r\n<Longitude>116.397128</Longitude>\r\n<Latitude>39.916527</Latitude>\r\n<Speed>36.5</Speed>\r\n<Direction>90</Direction>\r\n</Notify>"),
            "{text}"
        );
        let m = parse(&body).unwrap();
        assert_eq!(m.body, Body::MobilePosition(p));
        let bad = |inner: &str| {
            parse(format!("<Notify><CmdType>MobilePosition</CmdType><SN>1</SN><DeviceID>1</DeviceID>{inner}</Notify>").as_bytes())
        };
        assert!(matches!(
            bad("<Time>t</Time><Longitude>200</Longitude><Latitude>1</Latitude>"),
            Err(Error::BadValue {
                field: "Longitude",
                ..
            })
        ));
        assert!(matches!(
            bad("<Time>t</Time><Longitude>1</Longitude>"),
            Err(Error::Missing("Latitude"))
        ));
        assert!(matches!(
            bad("<Longitude>1</Longitude><Latitude>1</Latitude>"),
            Err(Error::Missing("Time"))
        ));
    }

    #[test]
    fn preset_lists_round_trip() {
        let presets = vec![
            Preset {
                id: "1".into(),
                name: Some("门口".into()),
            },
            Preset {
                id: "5".into(),
                name: None,
            },
        ];
        let body = preset_query_response(9, "34020000001310000001", &presets, Charset::Gb2312);
        let m = parse(&body).unwrap();
        assert_eq!(
            (m.kind, m.cmd_type.as_str(), m.sn),
            (Kind::Response, "PresetQuery", 9)
        );
        assert_eq!(preset_list(&body).unwrap(), presets);
        let empty = preset_query_response(1, "x", &[], Charset::Utf8);
        assert!(String::from_utf8(empty.clone())
            .unwrap()
            .contains("<PresetList Num=\"0\">"));
        assert!(preset_list(&empty).unwrap().is_empty());
    }

    #[test]
    fn subscription_queries() {
        let q = |cmd| String::from_utf8(subscribe_query(cmd, 3, "D", 5, Charset::Utf8)).unwrap();
        assert!(q("Catalog").ends_with("<DeviceID>D</DeviceID>\r\n</Query>\r\n"));
        assert!(q("Alarm").contains(
            "<StartAlarmPriority>0</StartAlarmPriority>\r\n<EndAlarmPriority>0</EndAlarmPriority>\r\n<AlarmMethod>0</AlarmMethod>\r\n"
        ));
        assert!(q("MobilePosition").contains("<Interval>5</Interval>\r\n</Query>"));
    }
}
