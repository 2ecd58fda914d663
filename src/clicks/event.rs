//! Raw click events: the record, its two text formats, and the reasons a line is rejected.
//!
//! Parsing is the hot path of the whole job (differential itself counts far faster than text
//! can be parsed), so the CSV parser works on bytes without allocating, and JSON is read in one
//! pass when it is spelled the way clickstay writes it (serde reads any other spelling).

use std::borrow::Cow;
use std::fmt;
use std::io::Write;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// The longest line accepted, without its newline; longer lines are rejected.
pub const MAX_LINE_BYTES: usize = 4096;

/// The largest event time accepted: 9999-12-31T23:59:59.999Z.
pub const MAX_CLICK_TS: u64 = 253_402_300_799_999;

/// The CSV header every CSV input starts with.
pub const CSV_HEADER: &str = "ad_id,click_ts,user_id,ip,country";

/// An attribute of a click event that a spec can group or filter by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Field {
    AdId,
    Country,
    UserId,
    Ip,
}

impl Field {
    /// The column name, as in the event format and the output tables.
    pub fn name(self) -> &'static str {
        match self {
            Field::AdId => "ad_id",
            Field::Country => "country",
            Field::UserId => "user_id",
            Field::Ip => "ip",
        }
    }

    /// The field named `name`, as a spec writes it.
    pub fn parse(name: &str) -> Option<Field> {
        [Field::AdId, Field::Country, Field::UserId, Field::Ip].into_iter().find(|f| f.name() == name)
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One ad click.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ClickEvent {
    pub ad_id: u64,
    /// Event time, epoch milliseconds.
    pub click_ts: u64,
    pub user_id: u64,
    pub ip: u32,
    pub country: Country,
}

impl ClickEvent {
    /// The value of `field` as a number, the form filters and group keys use.
    pub fn field(&self, field: Field) -> u64 {
        match field {
            Field::AdId => self.ad_id,
            Field::Country => self.country.0 as u64,
            Field::UserId => self.user_id,
            Field::Ip => self.ip as u64,
        }
    }
}

/// The input text formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
pub enum Format {
    /// Comma-separated with the header `ad_id,click_ts,user_id,ip,country`.
    Csv,
    /// One JSON object per line.
    Jsonl,
    /// Fixed-width binary records of valid events ([`write_packed`]): how the raw archive's
    /// events reach the driver in `clickstay reconcile`, with no text to format and parse again.
    /// Not a file format, so not on the command line.
    #[value(skip)]
    Packed,
}

impl Format {
    /// The format a file name implies, if any.
    pub fn from_path(path: &std::path::Path) -> Option<Format> {
        match path.extension()?.to_str()? {
            "csv" => Some(Format::Csv),
            "jsonl" | "ndjson" | "json" => Some(Format::Jsonl),
            _ => None,
        }
    }
}

/// An ISO 3166-1 alpha-2 country code, stored as its two ASCII bytes (`b0 << 8 | b1`), so
/// that numeric order is alphabetical order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Country(pub u16);

/// The officially assigned ISO 3166-1 alpha-2 codes.
const ASSIGNED_COUNTRIES: &str = "AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL \
BM BN BO BQ BR BS BT BV BW BY BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ DK DM DO DZ EC EE \
EG EH ER ES ET FI FJ FK FM FO FR GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS GT GU GW GY HK HM HN HR HT HU ID IE \
IL IM IN IO IQ IR IS IT JE JM JO JP KE KG KH KI KM KN KP KR KW KY KZ LA LB LC LI LK LR LS LT LU LV LY MA MC MD ME \
MF MG MH MK ML MM MN MO MP MQ MR MS MT MU MV MW MX MY MZ NA NC NE NF NG NI NL NO NP NR NU NZ OM PA PE PF PG PH PK \
PL PM PN PR PS PT PW PY QA RE RO RS RU RW SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV SX SY SZ TC TD TF \
TG TH TJ TK TL TM TN TO TR TT TV TW TZ UA UG UM US UY UZ VA VC VE VG VI VN VU WF WS YE YT ZA ZM ZW";

/// For each pair of upper-case letters (`a * 26 + b`), the code if it is assigned.
static ASSIGNED: std::sync::LazyLock<[Option<&'static str>; 26 * 26]> = std::sync::LazyLock::new(|| {
    let mut table = [None; 26 * 26];
    for code in ASSIGNED_COUNTRIES.split_whitespace() {
        let b = code.as_bytes();
        table[(b[0] - b'A') as usize * 26 + (b[1] - b'A') as usize] = Some(code);
    }
    table
});

fn slot(a: u8, b: u8) -> usize {
    (a - b'A') as usize * 26 + (b - b'A') as usize
}

impl Country {
    /// The code if `text` is an assigned upper-case ISO 3166-1 alpha-2 code.
    pub fn parse(text: &[u8]) -> Option<Country> {
        match text {
            [a @ b'A'..=b'Z', b @ b'A'..=b'Z'] if ASSIGNED[slot(*a, *b)].is_some() => {
                Some(Country(u16::from_be_bytes([*a, *b])))
            }
            _ => None,
        }
    }

    /// The two-letter code.
    pub fn as_str(&self) -> &'static str {
        let [a, b] = self.0.to_be_bytes();
        // Every Country was made by `parse`, so its slot holds the code.
        ASSIGNED[slot(a, b)].unwrap_or("??")
    }
}

impl fmt::Display for Country {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a line is not a click event; the text goes to the rejected output.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Reject {
    #[error("empty line")]
    EmptyLine,
    #[error("line is {0} bytes, longer than the {MAX_LINE_BYTES}-byte limit")]
    TooLong(usize),
    #[error("expected 5 fields (ad_id,click_ts,user_id,ip,country), found {0}")]
    FieldCount(usize),
    #[error("{field}: `{value}` is not an unsigned 64-bit integer")]
    NotAnInteger { field: &'static str, value: String },
    #[error("click_ts: negative time `{0}`")]
    NegativeTime(String),
    #[error("click_ts: {0} is past year 9999")]
    TimeOutOfRange(u64),
    #[error("ip: `{0}` is not a dotted IPv4 address")]
    BadIp(String),
    #[error("country: `{0}` is not an ISO 3166-1 alpha-2 code")]
    BadCountry(String),
    #[error("not valid UTF-8")]
    NotUtf8,
    #[error("JSON: {0}")]
    Json(String),
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Parses an unsigned decimal integer made of digits only (no sign, no spaces).
fn parse_u64(bytes: &[u8]) -> Option<u64> {
    if bytes.is_empty() || bytes.len() > 20 {
        return None;
    }
    let mut value: u64 = 0;
    for &b in bytes {
        let digit = b.wrapping_sub(b'0');
        if digit > 9 {
            return None;
        }
        value = value.checked_mul(10)?.checked_add(digit as u64)?;
    }
    Some(value)
}

fn integer(field: &'static str, bytes: &[u8]) -> Result<u64, Reject> {
    parse_u64(bytes).ok_or_else(|| Reject::NotAnInteger { field, value: lossy(bytes) })
}

fn event_time(bytes: &[u8]) -> Result<u64, Reject> {
    if bytes.first() == Some(&b'-') && parse_u64(&bytes[1..]).is_some() {
        return Err(Reject::NegativeTime(lossy(bytes)));
    }
    let ts = integer("click_ts", bytes)?;
    if ts > MAX_CLICK_TS {
        return Err(Reject::TimeOutOfRange(ts));
    }
    Ok(ts)
}

fn ip(bytes: &[u8]) -> Result<u32, Reject> {
    parse_ipv4(bytes).ok_or_else(|| Reject::BadIp(lossy(bytes)))
}

/// Parses a dotted IPv4 address exactly as `std::net::Ipv4Addr` does (four decimal octets of at
/// most three digits, no leading zeros, each at most 255), but straight from bytes: this is on
/// the hot path.
pub fn parse_ipv4(bytes: &[u8]) -> Option<u32> {
    let mut address: u32 = 0;
    let mut octets = 0;
    for part in bytes.split(|&b| b == b'.') {
        octets += 1;
        if octets > 4 || part.is_empty() || part.len() > 3 || (part.len() > 1 && part[0] == b'0') {
            return None;
        }
        let value = parse_u64(part)?;
        if value > 255 {
            return None;
        }
        address = address << 8 | value as u32;
    }
    (octets == 4).then_some(address)
}

fn country(bytes: &[u8]) -> Result<Country, Reject> {
    Country::parse(bytes).ok_or_else(|| Reject::BadCountry(lossy(bytes)))
}

/// Checks what every line must satisfy before its format is looked at.
fn check_line(line: &[u8], full_len: usize) -> Result<(), Reject> {
    if full_len > MAX_LINE_BYTES {
        return Err(Reject::TooLong(full_len));
    }
    if line.is_empty() {
        return Err(Reject::EmptyLine);
    }
    Ok(())
}

/// Parses one CSV data line (`ad_id,click_ts,user_id,ip,country`); `full_len` is the line's
/// length before any truncation.
pub fn parse_csv(line: &[u8], full_len: usize) -> Result<ClickEvent, Reject> {
    check_line(line, full_len)?;
    if let Some(event) = parse_csv_well_formed(line) {
        return Ok(event);
    }
    parse_csv_fields(line)
}

/// The common case in one pass over the bytes: a line that is a valid event. `None` for
/// anything unusual (including valid lines it does not bother with, such as a 20-digit id),
/// which [`parse_csv_fields`] then parses field by field and, if need be, says what is wrong.
/// Whatever this accepts, `parse_csv_fields` accepts with the same values.
fn parse_csv_well_formed(line: &[u8]) -> Option<ClickEvent> {
    let mut rest = line;
    let (ad_id, _) = leading_number(&mut rest, b',')?;
    let (click_ts, _) = leading_number(&mut rest, b',')?;
    let (user_id, _) = leading_number(&mut rest, b',')?;
    let ip = leading_ipv4(&mut rest, b',')?;
    let country = Country::parse(rest)?;
    (click_ts <= MAX_CLICK_TS).then_some(ClickEvent { ad_id, click_ts, user_id, ip, country })
}

/// Takes `a.b.c.d end` off the front of `rest`: an IPv4 address as [`parse_ipv4`] reads it
/// (at most three digits an octet, no leading zero, at most 255), and the byte `end`.
fn leading_ipv4(rest: &mut &[u8], end: u8) -> Option<u32> {
    let mut ip: u32 = 0;
    for end in [b'.', b'.', b'.', end] {
        ip = ip << 8 | leading_octet(rest, end)?;
    }
    Some(ip)
}

/// Takes `digits end` off the front of `rest` for one octet of an address: 1 to 3 digits, no
/// leading zero, at most 255.
fn leading_octet(rest: &mut &[u8], end: u8) -> Option<u32> {
    let digit = |i: usize| rest.get(i).map(|b| b.wrapping_sub(b'0') as u32).filter(|d| *d <= 9);
    let first = digit(0)?;
    let (value, digits) = match (digit(1), digit(2)) {
        (None, _) => (first, 1),
        (Some(second), None) => (first * 10 + second, 2),
        (Some(second), Some(third)) => (first * 100 + second * 10 + third, 3),
    };
    if (digits > 1 && first == 0) || value > 255 || rest.get(digits) != Some(&end) {
        return None;
    }
    *rest = &rest[digits + 1..];
    Some(value)
}

/// Takes `digits end` off the front of `rest`: 1 to 19 decimal digits (so no overflow) and the
/// byte `end`. Returns the number and how many digits it had.
fn leading_number(rest: &mut &[u8], end: u8) -> Option<(u64, usize)> {
    let mut value: u64 = 0;
    for (i, &byte) in rest.iter().enumerate().take(20) {
        if byte == end && i > 0 {
            *rest = &rest[i + 1..];
            return Some((value, i));
        }
        let digit = byte.wrapping_sub(b'0');
        if digit > 9 || i == 19 {
            return None;
        }
        value = value * 10 + digit as u64;
    }
    None
}

/// Parses a CSV data line field by field, naming the first problem it meets.
fn parse_csv_fields(line: &[u8]) -> Result<ClickEvent, Reject> {
    let mut fields: [&[u8]; 5] = [&[]; 5];
    let mut count = 0;
    for field in line.split(|&b| b == b',') {
        if count < 5 {
            fields[count] = field;
        }
        count += 1;
    }
    if count != 5 {
        return Err(Reject::FieldCount(count));
    }
    Ok(ClickEvent {
        ad_id: integer("ad_id", fields[0])?,
        click_ts: event_time(fields[1])?,
        user_id: integer("user_id", fields[2])?,
        ip: ip(fields[3])?,
        country: country(fields[4])?,
    })
}

/// The JSON shape of an event. Strings are borrowed from the line when they hold no escape, and
/// unescaped into their own buffer when they do (`"U\u0053"` is `"US"`): a conforming JSON
/// writer may escape any character. The numbers are JSON integers.
#[derive(Deserialize)]
struct JsonEvent<'a> {
    ad_id: u64,
    click_ts: i64,
    user_id: u64,
    #[serde(borrow)]
    ip: Cow<'a, str>,
    #[serde(borrow)]
    country: Cow<'a, str>,
}

/// Parses one JSON Lines event; extra keys are ignored.
pub fn parse_json(line: &[u8], full_len: usize) -> Result<ClickEvent, Reject> {
    check_line(line, full_len)?;
    if let Some(event) = parse_json_canonical(line) {
        return Ok(event);
    }
    parse_json_any(line)
}

/// The common case in one pass: an event exactly as clickstay writes it (the Kafka wire format,
/// `gen --format jsonl`): `{"ad_id":N,"click_ts":N,"user_id":N,"ip":"A.B.C.D","country":"CC"}`.
/// `None` for any other spelling, which serde then reads (and, if need be, says what is wrong).
/// Whatever this accepts, serde reads with the same values: numbers without leading zeros, as
/// JSON requires, short enough not to overflow.
fn parse_json_canonical(line: &[u8]) -> Option<ClickEvent> {
    fn number(rest: &mut &[u8], end: u8) -> Option<u64> {
        let leading_zero = rest.len() > 1 && rest[0] == b'0' && rest[1] != end;
        let (value, _) = leading_number(rest, end).filter(|_| !leading_zero)?;
        Some(value)
    }
    let mut rest = line.strip_prefix(b"{\"ad_id\":")?;
    let ad_id = number(&mut rest, b',')?;
    rest = rest.strip_prefix(b"\"click_ts\":")?;
    let click_ts = number(&mut rest, b',')?;
    rest = rest.strip_prefix(b"\"user_id\":")?;
    let user_id = number(&mut rest, b',')?;
    rest = rest.strip_prefix(b"\"ip\":\"")?;
    let ip = leading_ipv4(&mut rest, b'"')?;
    let country = Country::parse(rest.strip_prefix(b",\"country\":\"")?.strip_suffix(b"\"}")?)?;
    (click_ts <= MAX_CLICK_TS).then_some(ClickEvent { ad_id, click_ts, user_id, ip, country })
}

/// Parses any JSON object holding the event's keys, with serde.
fn parse_json_any(line: &[u8]) -> Result<ClickEvent, Reject> {
    // serde would also take an array of the values in field order: an event is an object.
    if line.trim_ascii_start().first() != Some(&b'{') {
        return Err(Reject::Json("an event must be a JSON object".into()));
    }
    let json: JsonEvent = serde_json::from_slice(line).map_err(|e| Reject::Json(e.to_string()))?;
    if json.click_ts < 0 {
        return Err(Reject::NegativeTime(json.click_ts.to_string()));
    }
    let click_ts = json.click_ts as u64;
    if click_ts > MAX_CLICK_TS {
        return Err(Reject::TimeOutOfRange(click_ts));
    }
    Ok(ClickEvent {
        ad_id: json.ad_id,
        click_ts,
        user_id: json.user_id,
        ip: ip(json.ip.as_bytes())?,
        country: country(json.country.as_bytes())?,
    })
}

/// Parses a line in `format`.
pub fn parse(format: Format, line: &[u8], full_len: usize) -> Result<ClickEvent, Reject> {
    match format {
        Format::Csv => parse_csv(line, full_len),
        Format::Jsonl => parse_json(line, full_len),
        Format::Packed => parse_packed(line),
    }
}

/// The length of a [`Format::Packed`] record: ad_id, click_ts, user_id (8 bytes each), ip (4)
/// and country (2), little-endian.
pub const PACKED_LEN: usize = 30;

/// Appends `event` as a [`Format::Packed`] record.
pub fn write_packed(event: &ClickEvent, out: &mut Vec<u8>) {
    out.extend_from_slice(&event.ad_id.to_le_bytes());
    out.extend_from_slice(&event.click_ts.to_le_bytes());
    out.extend_from_slice(&event.user_id.to_le_bytes());
    out.extend_from_slice(&event.ip.to_le_bytes());
    out.extend_from_slice(&event.country.0.to_le_bytes());
}

/// Reads a [`Format::Packed`] record (written from a valid event, so only its length and
/// its time's range are checked).
pub fn parse_packed(record: &[u8]) -> Result<ClickEvent, Reject> {
    let Ok(record) = <&[u8; PACKED_LEN]>::try_from(record) else {
        return Err(Reject::TooLong(record.len()));
    };
    let u64_at = |at: usize| u64::from_le_bytes(record[at..at + 8].try_into().expect("8 bytes"));
    let click_ts = u64_at(8);
    if click_ts > MAX_CLICK_TS {
        return Err(Reject::TimeOutOfRange(click_ts));
    }
    Ok(ClickEvent {
        ad_id: u64_at(0),
        click_ts,
        user_id: u64_at(16),
        ip: u32::from_le_bytes(record[24..28].try_into().expect("4 bytes")),
        country: Country(u16::from_le_bytes([record[28], record[29]])),
    })
}

/// Checks, before any worker starts, that a CSV file begins with the header; the error names the
/// file and line 1.
pub fn check_header(path: &std::path::Path, format: Format) -> anyhow::Result<()> {
    if format != Format::Csv {
        return Ok(());
    }
    let Some(first) = crate::sources::file::first_line(path, CSV_HEADER.len() + 2)? else {
        return Ok(()); // an empty file is an empty input
    };
    if first != CSV_HEADER.as_bytes() {
        anyhow::bail!(
            "{}: line 1: expected the CSV header `{CSV_HEADER}`, found `{}`",
            path.display(),
            String::from_utf8_lossy(&first)
        );
    }
    Ok(())
}

/// How one field of a line is written. Valid lines use `Int` and `Str`; the other variants let
/// `clickstay gen` write its malformed lines with the same code.
#[derive(Clone, Copy)]
pub enum FieldText<'a> {
    Int(u64),
    Str(&'a str),
    /// Written as is in both formats (not quoted in JSON).
    Verbatim(&'a str),
    /// The field or key is left out.
    Missing,
}

/// The field names: the CSV columns and the JSON keys, in this order.
const KEYS: [&str; 5] = ["ad_id", "click_ts", "user_id", "ip", "country"];

/// Writes event lines in one format with reused buffers (no allocation per valid line): the one
/// writer behind `gen`, the Kafka wire format and [`write_csv`] / [`write_json`].
pub struct EventWriter<W: Write> {
    pub out: W,
    pub format: Format,
    digits: itoa::Buffer,
}

impl<W: Write> EventWriter<W> {
    pub fn new(out: W, format: Format) -> Self {
        EventWriter { out, format, digits: itoa::Buffer::new() }
    }

    /// The CSV header line (nothing for JSON Lines).
    pub fn header(&mut self) -> std::io::Result<()> {
        match self.format {
            Format::Csv => writeln!(self.out, "{CSV_HEADER}"),
            Format::Jsonl | Format::Packed => Ok(()),
        }
    }

    /// Writes one line of the five fields in `KEYS` order; with `unterminated`
    /// a JSON object's closing brace is left out.
    pub fn line(&mut self, values: [FieldText<'_>; 5], unterminated: bool) -> std::io::Result<()> {
        let json = self.format == Format::Jsonl;
        if json {
            self.out.write_all(b"{")?;
        }
        let mut first = true;
        for (key, value) in KEYS.iter().zip(values) {
            if matches!(value, FieldText::Missing) {
                continue;
            }
            if !first {
                self.out.write_all(b",")?;
            }
            first = false;
            if json {
                self.out.write_all(b"\"")?;
                self.out.write_all(key.as_bytes())?;
                self.out.write_all(b"\":")?;
            }
            match value {
                FieldText::Int(n) => self.out.write_all(self.digits.format(n).as_bytes())?,
                FieldText::Str(s) if json => {
                    self.out.write_all(b"\"")?;
                    self.out.write_all(s.as_bytes())?;
                    self.out.write_all(b"\"")?;
                }
                FieldText::Str(s) | FieldText::Verbatim(s) => self.out.write_all(s.as_bytes())?,
                FieldText::Missing => unreachable!("skipped above"),
            }
        }
        if json && !unterminated {
            self.out.write_all(b"}")?;
        }
        self.out.write_all(b"\n")
    }

    /// Writes a valid event as one line.
    pub fn event(&mut self, click: &ClickEvent) -> std::io::Result<()> {
        let mut ip = IpText::default();
        self.line(fields(click, &mut ip), false)
    }
}

/// The fields of a valid line; the address is written into `ip`.
pub fn fields<'a>(click: &ClickEvent, ip: &'a mut IpText) -> [FieldText<'a>; 5] {
    [
        FieldText::Int(click.ad_id),
        FieldText::Int(click.click_ts),
        FieldText::Int(click.user_id),
        FieldText::Str(ip.format(click.ip)),
        FieldText::Str(click.country.as_str()),
    ]
}

/// Appends an event as a CSV data line (no newline).
pub fn write_csv(event: &ClickEvent, out: &mut Vec<u8>) {
    write_line(event, Format::Csv, out);
}

/// Appends the JSON Lines form of a valid event (no newline): the bytes `clickstay gen --format
/// jsonl` writes, and the value of a Kafka message ([`wire_event`]).
pub fn write_json(event: &ClickEvent, out: &mut Vec<u8>) {
    write_line(event, Format::Jsonl, out);
}

fn write_line(event: &ClickEvent, format: Format, out: &mut Vec<u8>) {
    EventWriter::new(&mut *out, format).event(event).expect("writing to a Vec cannot fail");
    out.pop(); // the newline
}

/// A stack buffer for a dotted IPv4 address (at most 15 bytes): `Ipv4Addr`'s `Display` without
/// its formatting machinery (the archive writes one per event).
#[derive(Default)]
pub struct IpText {
    bytes: [u8; 15],
}

impl IpText {
    pub fn format(&mut self, ip: u32) -> &str {
        let mut len = 0;
        let mut buffer = itoa::Buffer::new();
        for (i, octet) in ip.to_be_bytes().into_iter().enumerate() {
            if i > 0 {
                self.bytes[len] = b'.';
                len += 1;
            }
            let digits = buffer.format(octet).as_bytes();
            self.bytes[len..len + digits.len()].copy_from_slice(digits);
            len += digits.len();
        }
        std::str::from_utf8(&self.bytes[..len]).expect("digits and dots are ASCII")
    }
}

/// Appends an IPv4 address in dotted form.
pub fn write_ipv4(ip: u32, out: &mut Vec<u8>) {
    out.extend_from_slice(IpText::default().format(ip).as_bytes());
}

// The Kafka wire format: one click event per message. The value is the event as one JSON
// object, exactly the JSON Lines form (`{"ad_id":7,"click_ts":1767225600000,"user_id":42,
// "ip":"203.0.113.7","country":"US"}`, no newline) that [`parse_json`] reads; the key is the
// `ad_id` in decimal ASCII. Producers partition with librdkafka's `murmur2_random`, the
// partitioner of the Java client, so every message of one ad lands in one partition whichever
// client wrote it. Malformed input is sent as is, without a key, so that the job's rejected
// output sees it.

/// Appends the Kafka message value of `event` to `out` (its JSON Lines form).
pub fn wire_event(event: &ClickEvent, out: &mut Vec<u8>) {
    write_json(event, out);
}

/// Appends the Kafka message key of `event` to `out`: its `ad_id` in decimal ASCII.
pub fn wire_key(event: &ClickEvent, out: &mut Vec<u8>) {
    out.extend_from_slice(itoa::Buffer::new().format(event.ad_id).as_bytes());
}

/// Encodes a filter value from a spec (`country = ["US"]`, `ad_id = [7]`) the way
/// [`ClickEvent::field`] encodes the event's value.
pub fn encode_field_value(field: Field, value: &toml::Value) -> Result<u64, String> {
    match (field, value) {
        (Field::AdId | Field::UserId, toml::Value::Integer(i)) if *i >= 0 => Ok(*i as u64),
        (Field::Country, toml::Value::String(s)) => Country::parse(s.as_bytes())
            .map(|c| c.0 as u64)
            .ok_or_else(|| format!("`{s}` is not an ISO 3166-1 alpha-2 code")),
        (Field::Ip, toml::Value::String(s)) => s
            .parse::<Ipv4Addr>()
            .map(|ip| u32::from(ip) as u64)
            .map_err(|_| format!("`{s}` is not a dotted IPv4 address")),
        (_, other) => Err(format!("`{other}` is not a valid {field}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csv(line: &str) -> Result<ClickEvent, Reject> {
        parse_csv(line.as_bytes(), line.len())
    }

    #[test]
    fn there_are_249_assigned_codes() {
        assert_eq!(ASSIGNED_COUNTRIES.split_whitespace().count(), 249);
        assert_eq!(ASSIGNED.iter().flatten().count(), 249);
    }

    #[test]
    fn country_round_trip_and_order() {
        let us = Country::parse(b"US").unwrap();
        assert_eq!(us.as_str(), "US");
        assert!(Country::parse(b"CA").unwrap() < Country::parse(b"DE").unwrap());
        for bad in [&b"XX"[..], b"us", b"USA", b"U", b""] {
            assert_eq!(Country::parse(bad), None);
        }
    }

    #[test]
    fn a_good_csv_line() {
        let event = csv("4711,1767225600123,99123,10.1.2.3,US").unwrap();
        assert_eq!(event.ad_id, 4711);
        assert_eq!(event.click_ts, 1_767_225_600_123);
        assert_eq!(event.user_id, 99123);
        assert_eq!(Ipv4Addr::from(event.ip), Ipv4Addr::new(10, 1, 2, 3));
        assert_eq!(event.country.as_str(), "US");
        let mut out = Vec::new();
        write_csv(&event, &mut out);
        assert_eq!(out, b"4711,1767225600123,99123,10.1.2.3,US");
    }

    #[test]
    fn each_kind_of_bad_csv_line_names_its_problem() {
        let cases = [
            ("", "empty line"),
            ("1,2,3,10.0.0.1", "found 4"),
            ("1,2,3,10.0.0.1,US,x", "found 6"),
            ("x1,2,3,10.0.0.1,US", "ad_id"),
            ("1,-5,3,10.0.0.1,US", "negative time"),
            ("1,1.5,3,10.0.0.1,US", "click_ts"),
            ("1,999999999999999999,3,10.0.0.1,US", "past year 9999"),
            ("1,2,18446744073709551616,10.0.0.1,US", "user_id"),
            ("1,2,3,10.0.0.256,US", "ip"),
            ("1,2,3,10.0.0.1,XX", "country"),
            ("1,2,3,10.0.0.1,us", "country"),
            ("1, 2,3,10.0.0.1,US", "click_ts"),
        ];
        for (line, expected) in cases {
            let reason = csv(line).unwrap_err().to_string();
            assert!(reason.contains(expected), "{line:?}: {reason}");
        }
        let long = "9".repeat(MAX_LINE_BYTES + 1);
        assert!(csv(&long).unwrap_err().to_string().contains("longer than"));
    }

    #[test]
    fn the_one_pass_parser_agrees_with_the_field_parser() {
        let long_id = format!("{},1,2,10.0.0.1,US", u64::MAX);
        let cases = [
            "4711,1767225600123,99123,10.1.2.3,US",
            "0,0,0,0.0.0.0,DE",
            "1,2,3,255.255.255.255,ZW",
            &long_id,
            "1,2,3,256.0.0.1,US",
            "1,2,3,01.0.0.1,US",
            "1,2,3,1.0.0,US",
            "1,2,3,1.0.0.1.2,US",
            "1,2,3,1.0.0.1,US,",
            "1,,3,1.0.0.1,US",
            ",2,3,1.0.0.1,US",
            "1,2,3,1.0.0.1,U",
            "1,2,3,1.0.0.1,XX",
            "1,253402300800000,3,1.0.0.1,US",
            "1,253402300799999,3,1.0.0.1,US",
            "1,2,3,1.0.0.1",
            "1,2,3,1.0.0.00,US",
            "1,-2,3,1.0.0.1,US",
            "12345678901234567890,2,3,1.0.0.1,US",
            "1,2,3,1.0.0.1,US\r",
        ];
        for case in cases {
            let fast = parse_csv_well_formed(case.as_bytes());
            let fields = parse_csv_fields(case.as_bytes()).ok();
            assert!(fast.is_none() || fast == fields, "{case:?}: {fast:?} vs {fields:?}");
            assert_eq!(csv(case).ok(), fields, "{case:?}");
        }
        assert!(parse_csv_well_formed(b"4711,1767225600123,99123,10.1.2.3,US").is_some());
    }

    #[test]
    fn the_one_pass_json_parser_agrees_with_serde() {
        let cases = [
            r#"{"ad_id":4711,"click_ts":1767225600123,"user_id":99123,"ip":"10.1.2.3","country":"US"}"#,
            r#"{"ad_id":0,"click_ts":0,"user_id":0,"ip":"0.0.0.0","country":"DE"}"#,
            r#"{"ad_id":01,"click_ts":0,"user_id":0,"ip":"0.0.0.0","country":"DE"}"#,
            r#"{"ad_id":1,"click_ts":00,"user_id":0,"ip":"0.0.0.0","country":"DE"}"#,
            r#"{"ad_id":18446744073709551615,"click_ts":1,"user_id":2,"ip":"1.2.3.4","country":"US"}"#,
            r#"{"ad_id":1,"click_ts":253402300800000,"user_id":2,"ip":"1.2.3.4","country":"US"}"#,
            r#"{"ad_id":1,"click_ts":2,"user_id":3,"ip":"1.2.3.04","country":"US"}"#,
            r#"{"ad_id":1,"click_ts":2,"user_id":3,"ip":"1.2.3.4","country":"XX"}"#,
            r#"{"ad_id":1,"click_ts":2,"user_id":3,"ip":"1.2.3.4","country":"US"} "#,
            r#"{"ad_id":1,"click_ts":2,"user_id":3,"ip":"1.2.3.4","country":"US","x":1}"#,
            r#"{"ad_id":-1,"click_ts":2,"user_id":3,"ip":"1.2.3.4","country":"US"}"#,
            r#"{"ad_id":1,"click_ts":-2,"user_id":3,"ip":"1.2.3.4","country":"US"}"#,
        ];
        for case in cases {
            let fast = parse_json_canonical(case.as_bytes());
            let serde = parse_json_any(case.as_bytes()).ok();
            assert!(fast.is_none() || fast == serde, "{case}: {fast:?} vs {serde:?}");
            assert_eq!(parse_json(case.as_bytes(), case.len()).ok(), serde, "{case}");
        }
        assert!(parse_json_canonical(cases[0].as_bytes()).is_some());
        assert!(parse_json_canonical(cases[1].as_bytes()).is_some());
    }

    #[test]
    fn the_one_pass_address_reader_agrees_with_std() {
        let odd = ["00", "01", "09", "010", "0255", "1a", "", "-1", "2555"].map(String::from);
        for octet in (0..1000).map(|n: u32| n.to_string()).chain(odd) {
            let text = format!("{octet}.1.2.3,");
            let fast = leading_ipv4(&mut text.as_bytes(), b',');
            let std = format!("{octet}.1.2.3").parse::<Ipv4Addr>().ok().map(u32::from);
            assert_eq!(fast, std, "{text}");
        }
    }

    #[test]
    fn ipv4_writer_agrees_with_std() {
        for ip in [0u32, 1, 0x0A01_0203, 0xFFFF_FFFF, 0xC0A8_0001] {
            let mut out = Vec::new();
            write_ipv4(ip, &mut out);
            assert_eq!(out, Ipv4Addr::from(ip).to_string().as_bytes());
        }
    }

    #[test]
    fn ipv4_parser_agrees_with_std() {
        let cases = [
            "10.1.2.3",
            "0.0.0.0",
            "255.255.255.255",
            "256.1.1.1",
            "1.2.3",
            "1.2.3.4.5",
            "01.2.3.4",
            "0.0.0.00",
            "1..2.3",
            ".1.2.3",
            "1.2.3.",
            "1.2.3.4 ",
            "+1.2.3.4",
            "1.2.3.-4",
            "a.b.c.d",
            "1000.1.1.1",
            "",
            "1.2.3.0x1",
        ];
        for case in cases {
            let std = case.parse::<Ipv4Addr>().ok().map(u32::from);
            assert_eq!(parse_ipv4(case.as_bytes()), std, "{case:?}");
        }
    }

    #[test]
    fn json_lines() {
        let line =
            br#"{"ad_id":4711,"click_ts":1767225600123,"user_id":99123,"ip":"10.1.2.3","country":"US","extra":1}"#;
        let event = parse_json(line, line.len()).unwrap();
        assert_eq!(event, csv("4711,1767225600123,99123,10.1.2.3,US").unwrap());
        let cases: [(&[u8], &str); 6] = [
            (b"not json", "JSON"),
            (br#"[4,1767225602000,4,"10.0.0.4","US"]"#, "JSON object"),
            (br#"{"ad_id":1,"click_ts":2,"user_id":3,"ip":"10.0.0.1"}"#, "country"),
            (br#"{"ad_id":"1","click_ts":2,"user_id":3,"ip":"10.0.0.1","country":"US"}"#, "JSON"),
            (br#"{"ad_id":1,"click_ts":-2,"user_id":3,"ip":"10.0.0.1","country":"US"}"#, "negative time"),
            (br#"{"ad_id":1,"click_ts":2,"user_id":3,"ip":"x","country":"US"}"#, "ip"),
        ];
        for (line, expected) in cases {
            let reason = parse_json(line, line.len()).unwrap_err().to_string();
            assert!(reason.contains(expected), "{}: {reason}", String::from_utf8_lossy(line));
        }
    }

    #[test]
    fn every_spelling_of_an_event_is_the_same_event() {
        let plain = r#"{"ad_id":4711,"click_ts":1767225600123,"user_id":99123,"ip":"10.1.2.3","country":"US"}"#;
        let expected = parse_json(plain.as_bytes(), plain.len()).unwrap();
        let spellings = [
            r#"{"ad_id":4711,"click_ts":1767225600123,"user_id":99123,"ip":"10.1.2.3","country":"U\u0053"}"#,
            r#"{"ad_id":4711,"click_ts":1767225600123,"user_id":99123,"ip":"10\u002e1.2.3","country":"US"}"#,
            r#"{"ad_id":4711,"click_ts":1767225600123,"user_id":99123,"ip":"\u0031\u0030.1.2.3","country":"\u0055\u0053"}"#,
            r#"{"\u0061d_id":4711,"click_ts":1767225600123,"user_id":99123,"ip":"10.1.2.3","country":"US"}"#,
            r#"{"country":"US","ip":"10.1.2.3","user_id":99123,"click_ts":1767225600123,"ad_id":4711}"#,
            "{ \"ad_id\" : 4711 ,\n\t\"click_ts\": 1767225600123,\r\n \"user_id\":99123, \"ip\":\"10.1.2.3\", \"country\":\"US\" }",
            " {\"ad_id\":4711,\"click_ts\":1767225600123,\"user_id\":99123,\"ip\":\"10.1.2.3\",\"country\":\"US\"}\t",
            r#"{"event":"click","ad_id":4711,"click_ts":1767225600123,"user_id":99123,"ip":"10.1.2.3","country":"US","v":2.5}"#,
            r#"{"ad_id":4711,"meta":{"src":"web","tags":["a",{"b":null}],"n":-1e9},"click_ts":1767225600123,"user_id":99123,"ip":"10.1.2.3","country":"US","ok":true}"#,
            r#"{"ad_id":4711,"click_ts":1767225600123,"user_id":99123,"ip":"10.1.2.3","country":"US","note":"a \"quoted\" \\ \u00e9 \ud83d\ude00"}"#,
        ];
        for line in spellings {
            assert_eq!(parse_json(line.as_bytes(), line.len()), Ok(expected), "{line}");
        }
    }

    #[test]
    fn malformed_json_spellings_are_rejected_with_a_reason() {
        let cases = [
            (
                r#"{"ad_id":4711,"click_ts":1767225600123,"user_id":99123,"ip":"10.1.2.3","country":"U\u0058"}"#,
                "country: `UX`",
            ),
            (
                r#"{"ad_id":4711,"click_ts":1767225600123,"user_id":99123,"ip":"10.1.2.3","country":"u\u0073"}"#,
                "country: `us`",
            ),
            (
                r#"{"ad_id":4711,"click_ts":1767225600123,"user_id":99123,"ip":"10\u002e1.2","country":"US"}"#,
                "ip: `10.1.2`",
            ),
            (
                r#"{"ad_id":4711,"click_ts":1767225600123,"user_id":99123,"ip":"10.1.2.3","country":"U\q"}"#,
                "JSON: invalid escape",
            ),
            (
                r#"{"ad_id":4711,"click_ts":1767225600123,"user_id":99123,"ip":"10.1.2.3","country":"\ud800"}"#,
                "JSON: unexpected end of hex escape",
            ),
            (
                r#"{"ad_id":4711.5,"click_ts":1767225600123,"user_id":99123,"ip":"10.1.2.3","country":"US"}"#,
                "JSON: invalid type: floating point",
            ),
            (
                r#"{"ad_id":4711,"click_ts":1.767e12,"user_id":99123,"ip":"10.1.2.3","country":"US"}"#,
                "JSON: invalid type: floating point",
            ),
            (
                r#"{"ad_id":4711,"ad_id":4712,"click_ts":1767225600123,"user_id":99123,"ip":"10.1.2.3","country":"US"}"#,
                "JSON: duplicate field `ad_id`",
            ),
            (
                r#"{"ad_id":4711,"click_ts":1767225600123,"user_id":99123,"ip":"10.1.2.3","country":"US"} x"#,
                "JSON: trailing characters",
            ),
            (r#"{"ad_id":4711,"click_ts":1767225600123,"user_id":99123,"ip":"10.1.2.3","country":"US""#, "JSON: EOF"),
            (
                r#"{"ad_id":4711,"click_ts":1767225600123,"user_id":99123,"ip":"10.1.2.3","country":null}"#,
                "JSON: invalid type: null",
            ),
            (
                r#"{"ad_id":4711,"click_ts":1767225600123,"user_id":99123,"ip":10,"country":"US"}"#,
                "JSON: invalid type: integer",
            ),
            (
                r#"{"ad_id":4711,"click_ts":1767225600123,"user_id":99123,"country":"US","meta":{}}"#,
                "JSON: missing field `ip`",
            ),
        ];
        for (line, expected) in cases {
            let reason = parse_json(line.as_bytes(), line.len()).unwrap_err().to_string();
            assert!(reason.starts_with(expected), "{line}: {reason}");
        }
    }

    #[test]
    fn wire_value_is_json_that_parse_json_reads_back() {
        let event = ClickEvent {
            ad_id: 18_446_744_073_709_551_615,
            click_ts: 1_767_225_600_123,
            user_id: 42,
            ip: u32::from(std::net::Ipv4Addr::new(203, 0, 113, 7)),
            country: Country::parse(b"US").unwrap(),
        };
        let mut value = Vec::new();
        wire_event(&event, &mut value);
        assert_eq!(
            std::str::from_utf8(&value).unwrap(),
            r#"{"ad_id":18446744073709551615,"click_ts":1767225600123,"user_id":42,"ip":"203.0.113.7","country":"US"}"#
        );
        assert_eq!(parse_json(&value, value.len()), Ok(event));
        let mut key = Vec::new();
        wire_key(&event, &mut key);
        assert_eq!(key, b"18446744073709551615");
    }

    #[test]
    fn header_is_checked() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut file, b"ad,ts\n1,2\n").unwrap();
        let error = check_header(file.path(), Format::Csv).unwrap_err().to_string();
        assert!(error.contains("line 1") && error.contains("expected the CSV header"), "{error}");
        std::io::Write::write_all(&mut file, b"").unwrap();
        assert!(check_header(file.path(), Format::Jsonl).is_ok());
    }
}
