//! A brute-force model of `clickstay replay`, written independently of the crate.
//!
//! It reads the input file sequentially, line by line, with std and serde_json,
//! applies the watermark rule of the contract directly (one partition, file
//! order) and aggregates with `BTreeMap`s. It shares no code with the crate on
//! purpose: a bug copied into both would make the comparison worthless.
//!
//! Contract (issue 2): every data line is an event or rejected; before each valid
//! event `wm = max(earlier valid click_ts) - max_out_of_orderness`; the event is
//! late iff `pane_end + allowed_lateness <= wm`; every other valid event is
//! accepted and counted per pane, per (pane, country) and per sliding window.
#![allow(dead_code)] // each test binary uses a different part of the model

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;

/// The header a CSV event file must start with.
pub const CSV_HEADER: &str = "ad_id,click_ts,user_id,ip,country";
/// Lines longer than this (in bytes, without the line ending) are rejected.
pub const MAX_LINE_BYTES: usize = 4096;
/// The largest valid `click_ts`: 9999-12-31T23:59:59.999Z.
pub const MAX_CLICK_TS: u64 = 253_402_300_799_999;

/// The officially assigned ISO 3166-1 alpha-2 codes (249 of them).
pub const ISO_3166_ALPHA2: &str = "\
AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ \
BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ BR BS BT BV BW BY BZ \
CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ \
DE DJ DK DM DO DZ EC EE EG EH ER ES ET FI FJ FK FM FO FR \
GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS GT GU GW GY \
HK HM HN HR HT HU ID IE IL IM IN IO IQ IR IS IT JE JM JO JP \
KE KG KH KI KM KN KP KR KW KY KZ LA LB LC LI LK LR LS LT LU LV LY \
MA MC MD ME MF MG MH MK ML MM MN MO MP MQ MR MS MT MU MV MW MX MY MZ \
NA NC NE NF NG NI NL NO NP NR NU NZ OM PA PE PF PG PH PK PL PM PN PR PS PT PW PY QA \
RE RO RS RU RW SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV SX SY SZ \
TC TD TF TG TH TJ TK TL TM TN TO TR TT TV TW TZ UA UG UM US UY UZ \
VA VC VE VG VI VN VU WF WS YE YT ZA ZM ZW";

/// The time and ranking parameters of a dataflow spec, in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Spec {
    pub pane_ms: u64,
    pub max_out_of_orderness_ms: u64,
    pub allowed_lateness_ms: u64,
    pub window_size_ms: u64,
    pub window_slide_ms: u64,
    pub top_n: usize,
}

impl Spec {
    /// The parameters of `dataflows/ad_clicks.toml`.
    pub const DEFAULT: Spec = Spec {
        pane_ms: 60_000,
        max_out_of_orderness_ms: 5_000,
        allowed_lateness_ms: 60_000,
        window_size_ms: 300_000,
        window_slide_ms: 60_000,
        top_n: 10,
    };

    /// A spec file with these parameters and the same nodes and sinks as the default one.
    pub fn to_toml(self) -> String {
        format!(
            r#"name = "ad_clicks_test"

[time]
pane = "{pane}ms"
max_out_of_orderness = "{ooo}ms"
allowed_lateness = "{lateness}ms"

[nodes.clicks]
op = "source"
key = "ad_id"

[nodes.ad_click_counts]
op = "count"
input = "clicks"
group_by = ["ad_id"]

[nodes.ad_click_counts_by_country]
op = "count"
input = "clicks"
group_by = ["ad_id", "country"]

[nodes.top_ads]
op = "top_n"
input = "ad_click_counts"
window = {{ size = "{size}ms", slide = "{slide}ms" }}
n = {n}

[sinks.ad_click_counts]
input = "ad_click_counts"

[sinks.ad_click_counts_by_country]
input = "ad_click_counts_by_country"

[sinks.top_ads]
input = "top_ads"

[sinks.late_clicks]
input = "clicks.late"

[sinks.rejected]
input = "clicks.rejected"
"#,
            pane = self.pane_ms,
            ooo = self.max_out_of_orderness_ms,
            lateness = self.allowed_lateness_ms,
            size = self.window_size_ms,
            slide = self.window_slide_ms,
            n = self.top_n,
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Csv,
    Jsonl,
}

/// A valid click event.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Click {
    pub ad_id: u64,
    pub click_ts: u64,
    pub user_id: u64,
    pub ip: Ipv4Addr,
    pub country: String,
}

impl Click {
    /// The row of `late_clicks.csv`.
    pub fn row(&self) -> Vec<String> {
        vec![
            self.ad_id.to_string(),
            self.click_ts.to_string(),
            self.user_id.to_string(),
            self.ip.to_string(),
            self.country.clone(),
        ]
    }
}

/// Why a line was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Problem {
    EmptyLine,
    TooLong,
    /// Not five comma-separated fields.
    FieldCount,
    /// Not JSON, or not a JSON object.
    Json,
    /// The named field is missing, of the wrong type or out of range.
    Field(&'static str),
}

impl Problem {
    /// Words of which the replay's reason must contain at least one (compared case-insensitively).
    pub fn keywords(self) -> &'static [&'static str] {
        match self {
            Problem::EmptyLine => &["empty"],
            Problem::TooLong => &["longer", "long", "4096"],
            Problem::FieldCount => &["fields"],
            Problem::Json => &["json"],
            Problem::Field("ad_id") => &["ad_id", "json"],
            Problem::Field("click_ts") => &["click_ts", "json"],
            Problem::Field("user_id") => &["user_id", "json"],
            Problem::Field("ip") => &["ip", "json"],
            Problem::Field("country") => &["country", "json"],
            Problem::Field(other) => panic!("no such field {other}"),
        }
    }

    /// Whether `reason` names this problem.
    pub fn named_by(self, reason: &str) -> bool {
        let reason = reason.to_lowercase();
        self.keywords().iter().any(|k| reason.contains(k))
    }
}

/// A rejected line, as `rejected.csv` must list it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejected {
    pub line: u64,
    pub problem: Problem,
    /// The line without its ending, cut to its first 4096 bytes.
    pub raw: String,
}

/// One row of `top_ads.csv`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopRow {
    pub window_start: i64,
    pub window_end: i64,
    pub rank: usize,
    pub ad_id: u64,
    pub clicks: u64,
}

/// Everything a replay of one file must produce.
#[derive(Debug, Default)]
pub struct Outcome {
    /// (pane start, ad_id) -> accepted clicks.
    pub counts: BTreeMap<(i64, u64), u64>,
    /// (pane start, ad_id, country) -> accepted clicks.
    pub counts_by_country: BTreeMap<(i64, u64, String), u64>,
    /// Sorted by window start, then rank.
    pub top: Vec<TopRow>,
    /// In file order (the replay may write them in any order).
    pub late: Vec<Click>,
    /// In file order (the replay may write them in any order).
    pub rejected: Vec<Rejected>,
    /// Data lines read (events and rejected lines, not the CSV header).
    pub read: u64,
    pub accepted: u64,
}

impl Outcome {
    /// `ad_click_counts.csv` as rows, header first.
    pub fn counts_table(&self) -> Vec<Vec<String>> {
        let mut rows = vec![strings(&["window_start", "ad_id", "clicks"])];
        rows.extend(
            self.counts.iter().map(|((start, ad), clicks)| vec![start.to_string(), ad.to_string(), clicks.to_string()]),
        );
        rows
    }

    /// `ad_click_counts_by_country.csv` as rows, header first.
    pub fn counts_by_country_table(&self) -> Vec<Vec<String>> {
        let mut rows = vec![strings(&["window_start", "ad_id", "country", "clicks"])];
        rows.extend(self.counts_by_country.iter().map(|((start, ad, country), clicks)| {
            vec![start.to_string(), ad.to_string(), country.clone(), clicks.to_string()]
        }));
        rows
    }

    /// `top_ads.csv` as rows, header first.
    pub fn top_table(&self) -> Vec<Vec<String>> {
        let mut rows = vec![strings(&["window_start", "window_end", "rank", "ad_id", "clicks"])];
        rows.extend(self.top.iter().map(|t| {
            vec![
                t.window_start.to_string(),
                t.window_end.to_string(),
                t.rank.to_string(),
                t.ad_id.to_string(),
                t.clicks.to_string(),
            ]
        }));
        rows
    }

    pub fn late_count(&self) -> u64 {
        self.late.len() as u64
    }

    pub fn rejected_count(&self) -> u64 {
        self.rejected.len() as u64
    }
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// Computes what replaying `path` with `spec` must produce. A CSV file whose
/// first line is not the header is an error, as it is for the replay.
pub fn replay(path: &Path, format: Format, spec: &Spec) -> Result<Outcome, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    replay_bytes(&bytes, format, spec)
}

/// [`replay`] on the file's contents.
pub fn replay_bytes(bytes: &[u8], format: Format, spec: &Spec) -> Result<Outcome, String> {
    let mut outcome = Outcome::default();
    let mut max_ts: Option<u64> = None;
    let mut windows: BTreeMap<(i64, u64), u64> = BTreeMap::new();
    for (index, line) in physical_lines(bytes).enumerate() {
        let number = index as u64 + 1;
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if format == Format::Csv && number == 1 {
            if line != CSV_HEADER.as_bytes() {
                return Err(format!("line 1 is not the header {CSV_HEADER}"));
            }
            continue;
        }
        outcome.read += 1;
        let click = match parse_line(line, format) {
            Ok(click) => click,
            Err(problem) => {
                let raw = &line[..line.len().min(MAX_LINE_BYTES)];
                outcome.rejected.push(Rejected {
                    line: number,
                    problem,
                    raw: String::from_utf8_lossy(raw).into_owned(),
                });
                continue;
            }
        };
        let watermark = max_ts.map(|m| m as i128 - spec.max_out_of_orderness_ms as i128);
        max_ts = max_ts.max(Some(click.click_ts));
        let pane_start = pane_start(click.click_ts, spec);
        let pane_end = pane_start as i128 + spec.pane_ms as i128;
        let late = watermark.is_some_and(|wm| pane_end + spec.allowed_lateness_ms as i128 <= wm);
        if late {
            outcome.late.push(click);
            continue;
        }
        outcome.accepted += 1;
        *outcome.counts.entry((pane_start, click.ad_id)).or_default() += 1;
        *outcome.counts_by_country.entry((pane_start, click.ad_id, click.country.clone())).or_default() += 1;
        for window_start in window_starts(click.click_ts, spec) {
            *windows.entry((window_start, click.ad_id)).or_default() += 1;
        }
    }
    outcome.top = rank(&windows, spec);
    Ok(outcome)
}

/// The lines of a file: split at `\n`; a final line without `\n` is a line,
/// and the `\n` at the end of the file does not start another one.
fn physical_lines(bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
    let body = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    let empty_file = bytes.is_empty();
    body.split(|&b| b == b'\n').filter(move |_| !empty_file)
}

fn pane_start(ts: u64, spec: &Spec) -> i64 {
    (ts / spec.pane_ms * spec.pane_ms) as i64
}

/// Starts of every window `[k*slide, k*slide + size)` that contains `ts`.
fn window_starts(ts: u64, spec: &Spec) -> impl Iterator<Item = i64> {
    let (ts, size, slide) = (ts as i64, spec.window_size_ms as i64, spec.window_slide_ms as i64);
    let first = (ts - size).div_euclid(slide) + 1;
    let last = ts.div_euclid(slide);
    (first..=last).map(move |k| k * slide)
}

/// The top-N rows of every window: clicks descending, then ad_id ascending.
fn rank(windows: &BTreeMap<(i64, u64), u64>, spec: &Spec) -> Vec<TopRow> {
    let mut by_window: BTreeMap<i64, Vec<(u64, u64)>> = BTreeMap::new();
    for (&(start, ad_id), &clicks) in windows {
        by_window.entry(start).or_default().push((ad_id, clicks));
    }
    let mut rows = Vec::new();
    for (start, mut ads) in by_window {
        ads.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        for (rank, (ad_id, clicks)) in ads.into_iter().take(spec.top_n).enumerate() {
            rows.push(TopRow {
                window_start: start,
                window_end: start + spec.window_size_ms as i64,
                rank: rank + 1,
                ad_id,
                clicks,
            });
        }
    }
    rows
}

/// Parses one line (without its ending) into a click, or says what is wrong with it.
pub fn parse_line(line: &[u8], format: Format) -> Result<Click, Problem> {
    if line.is_empty() {
        return Err(Problem::EmptyLine);
    }
    if line.len() > MAX_LINE_BYTES {
        return Err(Problem::TooLong);
    }
    match format {
        Format::Csv => parse_csv(line),
        Format::Jsonl => parse_json(line),
    }
}

fn parse_csv(line: &[u8]) -> Result<Click, Problem> {
    let text = String::from_utf8_lossy(line);
    let fields: Vec<&str> = text.split(',').collect();
    let [ad_id, click_ts, user_id, ip, country] = fields[..] else {
        return Err(Problem::FieldCount);
    };
    let ad_id = ad_id.parse::<u64>().map_err(|_| Problem::Field("ad_id"))?;
    let click_ts = click_ts.parse::<u64>().ok().filter(|&ts| ts <= MAX_CLICK_TS).ok_or(Problem::Field("click_ts"))?;
    let user_id = user_id.parse::<u64>().map_err(|_| Problem::Field("user_id"))?;
    let ip = ip.parse::<Ipv4Addr>().map_err(|_| Problem::Field("ip"))?;
    let country = checked_country(country)?;
    Ok(Click { ad_id, click_ts, user_id, ip, country })
}

fn parse_json(line: &[u8]) -> Result<Click, Problem> {
    let value: serde_json::Value = serde_json::from_slice(line).map_err(|_| Problem::Json)?;
    let object = value.as_object().ok_or(Problem::Json)?;
    let number = |key: &'static str| object.get(key).and_then(serde_json::Value::as_u64).ok_or(Problem::Field(key));
    let text = |key: &'static str| object.get(key).and_then(serde_json::Value::as_str).ok_or(Problem::Field(key));
    let ad_id = number("ad_id")?;
    let click_ts = number("click_ts")?;
    if click_ts > MAX_CLICK_TS {
        return Err(Problem::Field("click_ts"));
    }
    let user_id = number("user_id")?;
    let ip = text("ip")?.parse::<Ipv4Addr>().map_err(|_| Problem::Field("ip"))?;
    let country = checked_country(text("country")?)?;
    Ok(Click { ad_id, click_ts, user_id, ip, country })
}

fn checked_country(code: &str) -> Result<String, Problem> {
    let assigned = code.len() == 2 && ISO_3166_ALPHA2.split(' ').any(|c| c == code);
    if assigned { Ok(code.to_string()) } else { Err(Problem::Field("country")) }
}

/// The numbers of the replay's summary line: `read N`, `accepted A`, `late L`, `rejected R`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Summary {
    pub read: u64,
    pub accepted: u64,
    pub late: u64,
    pub rejected: u64,
}

impl Summary {
    pub fn of(outcome: &Outcome) -> Summary {
        Summary {
            read: outcome.read,
            accepted: outcome.accepted,
            late: outcome.late_count(),
            rejected: outcome.rejected_count(),
        }
    }

    /// Finds the four numbers in the replay's stdout (thousands separators allowed).
    pub fn parse(stdout: &str) -> Result<Summary, String> {
        let number = |word: &str| -> Result<u64, String> {
            let pattern = format!("{word} ");
            let at = stdout.find(&pattern).ok_or_else(|| format!("no `{word} N` in the summary {stdout:?}"))?;
            let digits: String = stdout[at + pattern.len()..]
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == ',' || *c == '_')
                .filter(char::is_ascii_digit)
                .collect();
            digits.parse().map_err(|_| format!("`{word}` has no number in {stdout:?}"))
        };
        Ok(Summary {
            read: number("read")?,
            accepted: number("accepted")?,
            late: number("late")?,
            rejected: number("rejected")?,
        })
    }
}
