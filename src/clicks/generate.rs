//! `clickstay gen`: realistic raw click events for tests and benchmarks.
//!
//! The generator is deterministic: the same arguments and seed always give a
//! byte-identical file (ChaCha8 is portable and its stream is specified), so a
//! failing test or a benchmark can be reproduced from its command line alone.
//!
//! Event `i` has the nominal time `start + i * 1000 / rate`. Most events are
//! moved back by a uniform amount in `[0, max_disorder]` (bounded disorder, which
//! the dataflow's `max_out_of_orderness` absorbs); a small fraction is moved back
//! by an amount in the `--late-ms` range, far enough to arrive after its window
//! closed. Optionally a fraction of the lines is replaced by malformed lines of
//! the kinds the replay must reject.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use rand::distr::{Bernoulli, Distribution, Uniform};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::Zipf;

use crate::clicks::event::{self, ClickEvent, Country, EventWriter, FieldText, Format, IpText};

/// Options of `clickstay gen`.
#[derive(Args, Debug)]
pub struct GenArgs {
    /// How many lines to write (not counting the CSV header); malformed lines count.
    #[arg(long)]
    pub events: u64,
    /// Output format; by default from the extension of `--out` (`.jsonl`, `.ndjson` or `.json`:
    /// JSON Lines; anything else CSV).
    #[arg(long, value_enum)]
    pub format: Option<Format>,
    /// The file to write (`-` for standard output).
    #[arg(long)]
    pub out: PathBuf,
    /// Events per simulated second: event `i` nominally happens at `start + i*1000/rate` ms.
    #[arg(long, default_value_t = 10_000.0, value_parser = parse_rate)]
    pub rate: f64,
    #[command(flatten)]
    pub generator: GeneratorOptions,
}

/// What the generated events look like; shared by `clickstay gen` and `clickstay produce`, so
/// that a file and a topic made with the same options hold the same events.
#[derive(Args, Debug, Clone)]
pub struct GeneratorOptions {
    /// Seed of the random generator: the same seed gives the same events, byte for byte.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Bounded disorder: each on-time event is moved back by up to this many ms.
    #[arg(long, default_value_t = 2_000)]
    pub max_disorder_ms: u64,
    /// Fraction of very late events (moved back by an amount in `--late-ms`).
    #[arg(long, default_value_t = 0.001, value_parser = parse_fraction)]
    pub late_fraction: f64,
    /// How late the very late events are, in ms: `MIN..MAX` (both inclusive).
    #[arg(long, default_value = "70000..600000", value_parser = parse_ms_range, value_name = "MIN..MAX")]
    pub late_ms: MsRange,
    /// Number of distinct ads (ids `1..=N`), drawn with Zipf popularity.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub ads: u64,
    /// Number of distinct users (ids `1..=N`), drawn uniformly.
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub users: u64,
    /// Nominal time of the first event, epoch ms (default 2026-01-01T00:00:00Z).
    #[arg(long, default_value_t = 1_767_225_600_000)]
    pub start_ms: u64,
    /// Fraction of lines replaced by a malformed line of a random kind.
    #[arg(long, default_value_t = 0.0, value_parser = parse_fraction)]
    pub malformed_fraction: f64,
}

/// An inclusive range of milliseconds, written `MIN..MAX` on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsRange {
    pub min: u64,
    pub max: u64,
}

fn parse_ms_range(text: &str) -> Result<MsRange, String> {
    let (min, max) = text.split_once("..").ok_or_else(|| format!("expected MIN..MAX in milliseconds, got {text:?}"))?;
    let parse = |part: &str, what: &str| {
        part.trim().parse::<u64>().map_err(|e| format!("{what} {part:?} is not a number of milliseconds: {e}"))
    };
    let range = MsRange { min: parse(min, "minimum")?, max: parse(max, "maximum")? };
    if range.min > range.max {
        return Err(format!("minimum {} is greater than maximum {} (the range is empty)", range.min, range.max));
    }
    Ok(range)
}

fn parse_fraction(text: &str) -> Result<f64, String> {
    let value: f64 = text.parse().map_err(|e| format!("{text:?} is not a number: {e}"))?;
    if !(0.0..=1.0).contains(&value) {
        return Err(format!("{value} is not a fraction between 0 and 1"));
    }
    Ok(value)
}

pub(crate) fn parse_rate(text: &str) -> Result<f64, String> {
    let value: f64 = text.parse().map_err(|e| format!("{text:?} is not a number: {e}"))?;
    if !(value.is_finite() && value > 0.0) {
        return Err(format!("{value} is not a positive number of events per second"));
    }
    Ok(value)
}

/// The countries and their relative weights: a skewed, roughly traffic-like mix.
const COUNTRIES: [(&str, u32); 20] = [
    ("US", 300),
    ("IN", 110),
    ("DE", 80),
    ("GB", 75),
    ("BR", 60),
    ("JP", 55),
    ("FR", 50),
    ("CA", 40),
    ("KR", 35),
    ("ID", 30),
    ("MX", 28),
    ("IT", 25),
    ("ES", 24),
    ("TR", 20),
    ("AU", 18),
    ("NL", 15),
    ("PL", 12),
    ("SE", 10),
    ("ZA", 8),
    ("SG", 5),
];

/// Draws the clicks of the stream in order.
struct ClickSource {
    rng: ChaCha8Rng,
    ad_rank: Zipf<f64>,
    ad_count: u64,
    /// Rank `r` (1 = most popular) becomes ad `(r * ad_stride mod ads) + 1`, so
    /// that popularity is not simply the order of the ids (a top-N that sorted by id
    /// by mistake would then still look right).
    ad_stride: u64,
    user: Uniform<u64>,
    country: Uniform<u32>,
    country_upper_bounds: [u32; COUNTRIES.len()],
    /// `COUNTRIES` parsed once.
    country_codes: [Country; COUNTRIES.len()],
    late: Bernoulli,
    disorder: Uniform<u64>,
    lateness: Uniform<u64>,
    start_ms: u64,
    ms_per_event: f64,
}

impl ClickSource {
    fn new(args: &GeneratorOptions, rate: f64) -> Result<ClickSource> {
        let mut country_upper_bounds = [0u32; COUNTRIES.len()];
        let mut total = 0;
        for (bound, (_, weight)) in country_upper_bounds.iter_mut().zip(COUNTRIES) {
            total += weight;
            *bound = total;
        }
        Ok(ClickSource {
            rng: ChaCha8Rng::seed_from_u64(args.seed),
            ad_rank: Zipf::new(args.ads as f64, 1.0).context("--ads: no Zipf distribution")?,
            ad_count: args.ads,
            ad_stride: coprime_stride(args.ads),
            user: Uniform::new_inclusive(1, args.users).context("--users")?,
            country: Uniform::new(0, total).context("country weights")?,
            country_upper_bounds,
            country_codes: COUNTRIES
                .map(|(code, _)| Country::parse(code.as_bytes()).expect("COUNTRIES are assigned codes")),
            late: Bernoulli::new(args.late_fraction).context("--late-fraction")?,
            disorder: Uniform::new_inclusive(0, args.max_disorder_ms).context("--max-disorder-ms")?,
            lateness: Uniform::new_inclusive(args.late_ms.min, args.late_ms.max).context("--late-ms")?,
            start_ms: args.start_ms,
            ms_per_event: 1000.0 / rate,
        })
    }

    /// The `i`-th click and whether it was made very late.
    fn click(&mut self, i: u64) -> (ClickEvent, bool) {
        let nominal = self.start_ms.saturating_add((i as f64 * self.ms_per_event) as u64);
        let late = self.late.sample(&mut self.rng);
        let shift = if late { &self.lateness } else { &self.disorder }.sample(&mut self.rng);
        let rank = (self.ad_rank.sample(&mut self.rng) as u64).clamp(1, self.ad_count);
        let ad_id = ((u128::from(rank) * u128::from(self.ad_stride)) % u128::from(self.ad_count)) as u64 + 1;
        let pick = self.country.sample(&mut self.rng);
        let country = self.country_codes[self.country_upper_bounds.partition_point(|&b| b <= pick)];
        let click = ClickEvent {
            ad_id,
            click_ts: nominal.saturating_sub(shift),
            user_id: self.user.sample(&mut self.rng),
            ip: self.plausible_ip().into(),
            country,
        };
        (click, late)
    }

    /// A public-looking unicast address: first octet 1..=223 without loopback, last octet not 0 or 255.
    fn plausible_ip(&mut self) -> Ipv4Addr {
        let mut first: u8 = self.rng.random_range(1..=223);
        if first == 127 {
            first = 128;
        }
        Ipv4Addr::new(first, self.rng.random(), self.rng.random(), self.rng.random_range(1..=254))
    }
}

/// A multiplier near `n * 0.618` that is coprime with `n`, so `r -> r * stride mod n` is a permutation.
fn coprime_stride(n: u64) -> u64 {
    fn gcd(mut a: u64, mut b: u64) -> u64 {
        while b != 0 {
            (a, b) = (b, a % b);
        }
        a
    }
    let mut stride = ((n as f64 * 0.618) as u64).max(1);
    while gcd(stride, n) != 1 {
        stride += 1;
    }
    stride
}

/// The ways a generated line can be broken; each must be rejected by the replay.
#[derive(Clone, Copy, Debug)]
enum Malformation {
    /// `ad_id` or `user_id` that is not a u64 (letters, a fraction, a sign, overflow).
    BadNumber,
    /// The `user_id` field (CSV) or key (JSON) is left out.
    MissingField,
    /// A country code that is not an assigned upper-case ISO 3166-1 alpha-2 code.
    BadCountry,
    /// A negative `click_ts`.
    NegativeTime,
    /// A line over 4096 bytes that would otherwise be valid (padding in `ad_id`).
    OverLong,
    /// JSON Lines only: a line that is not JSON (its closing brace is missing).
    NotJson,
    /// JSON Lines only: `ad_id` as a JSON string instead of a number.
    WrongType,
}

const CSV_MALFORMATIONS: &[Malformation] = &[
    Malformation::BadNumber,
    Malformation::MissingField,
    Malformation::BadCountry,
    Malformation::NegativeTime,
    Malformation::OverLong,
];

const JSONL_MALFORMATIONS: &[Malformation] = &[
    Malformation::BadNumber,
    Malformation::MissingField,
    Malformation::BadCountry,
    Malformation::NegativeTime,
    Malformation::OverLong,
    Malformation::NotJson,
    Malformation::WrongType,
];

/// Writes `click` broken in the way `kind` says; `variant` picks among the
/// concrete forms of that kind so that the file covers all of them.
fn write_malformed<W: Write>(
    writer: &mut EventWriter<W>,
    click: &ClickEvent,
    kind: Malformation,
    variant: u32,
) -> std::io::Result<()> {
    let mut ip = IpText::default();
    let mut values = event::fields(click, &mut ip);
    let negative_time = format!("-{}", click.click_ts.max(1));
    let padded_ad_id = match writer.format {
        // Leading zeros keep a CSV number valid; JSON allows whitespace instead.
        Format::Csv | Format::Packed => format!("{:0>5000}", click.ad_id),
        Format::Jsonl => format!("{:>5000}", click.ad_id),
    };
    match kind {
        Malformation::BadNumber => {
            const BAD: [&str; 5] = ["12a4", "1.5", "-7", "18446744073709551616", ""];
            let field = if variant.is_multiple_of(2) { 0 } else { 2 };
            values[field] = FieldText::Verbatim(BAD[(variant / 2) as usize % BAD.len()]);
        }
        Malformation::MissingField => values[2] = FieldText::Missing,
        Malformation::BadCountry => {
            const BAD: [&str; 5] = ["us", "XX", "ZZ", "USA", "U1"];
            values[4] = FieldText::Str(BAD[variant as usize % BAD.len()]);
        }
        Malformation::NegativeTime => values[1] = FieldText::Verbatim(&negative_time),
        Malformation::OverLong => values[0] = FieldText::Verbatim(&padded_ad_id),
        Malformation::NotJson => return writer.line(values, true),
        Malformation::WrongType => values[0] = FieldText::Str("4711"),
    }
    writer.line(values, false)
}

/// One item of the generated stream.
pub enum Generated<'a> {
    /// A valid event; `late` says it was made very late (after its window closed).
    Valid { event: ClickEvent, late: bool },
    /// A malformed line in the generator's format, without its newline.
    Malformed(&'a [u8]),
}

/// The deterministic stream of generated events behind `clickstay gen` and `clickstay produce`.
pub struct Generator {
    source: ClickSource,
    malformed: Bernoulli,
    kinds: &'static [Malformation],
    /// Where a malformed line is written before it is handed out.
    scratch: EventWriter<Vec<u8>>,
    next: u64,
    events: u64,
}

impl Generator {
    /// `events` items whose nominal times are `events_per_second` apart; malformed lines are of
    /// the kinds `format` can have.
    pub fn new(options: &GeneratorOptions, events: u64, events_per_second: f64, format: Format) -> Result<Self> {
        Ok(Generator {
            source: ClickSource::new(options, events_per_second)?,
            malformed: Bernoulli::new(options.malformed_fraction).context("--malformed-fraction")?,
            kinds: match format {
                Format::Csv | Format::Packed => CSV_MALFORMATIONS,
                Format::Jsonl => JSONL_MALFORMATIONS,
            },
            scratch: EventWriter::new(Vec::new(), format),
            next: 0,
            events,
        })
    }

    /// The next item, or `None` after the last (a lending iterator: a malformed line borrows the
    /// generator's buffer).
    pub fn next_item(&mut self) -> Option<Generated<'_>> {
        if self.next == self.events {
            return None;
        }
        let (click, late) = self.source.click(self.next);
        self.next += 1;
        // Drawn from the same stream so that the output stays a function of the seed.
        if !self.malformed.sample(&mut self.source.rng) {
            return Some(Generated::Valid { event: click, late });
        }
        let kind = self.kinds[self.source.rng.random_range(0..self.kinds.len())];
        let variant = self.source.rng.random_range(0..10);
        self.scratch.out.clear();
        write_malformed(&mut self.scratch, &click, kind, variant).expect("writing to a Vec cannot fail");
        self.scratch.out.pop();
        Some(Generated::Malformed(&self.scratch.out))
    }
}

/// What was written, for the summary line.
#[derive(Default)]
struct Tally {
    valid: u64,
    late: u64,
    malformed: u64,
}

pub fn run(args: &GenArgs) -> Result<()> {
    let format = args.format.unwrap_or_else(|| Format::from_path(&args.out).unwrap_or(Format::Csv));
    let started = Instant::now();
    let tally = if args.out.as_os_str() == "-" {
        generate(args, format, std::io::stdout().lock())
    } else {
        let file = File::create(&args.out).with_context(|| format!("cannot create {}", args.out.display()))?;
        generate(args, format, file)
    }
    .with_context(|| format!("cannot write events to {}", args.out.display()))?;
    let seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "gen: wrote {} lines ({} valid, {} of them very late; {} malformed) as {:?} to {} in {:.2} s ({:.0} lines/s)",
        args.events,
        tally.valid,
        tally.late,
        tally.malformed,
        format,
        args.out.display(),
        seconds,
        args.events as f64 / seconds.max(1e-9),
    );
    Ok(())
}

fn generate(args: &GenArgs, format: Format, out: impl Write) -> Result<Tally> {
    let mut generator = Generator::new(&args.generator, args.events, args.rate, format)?;
    let mut writer = EventWriter::new(BufWriter::with_capacity(1 << 20, out), format);
    let mut tally = Tally::default();
    writer.header()?;
    while let Some(item) = generator.next_item() {
        match item {
            Generated::Valid { event, late } => {
                writer.event(&event)?;
                tally.valid += 1;
                tally.late += u64::from(late);
            }
            Generated::Malformed(line) => {
                writer.out.write_all(line)?;
                writer.out.write_all(b"\n")?;
                tally.malformed += 1;
            }
        }
    }
    writer.out.flush()?;
    Ok(tally)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn late_range_parses_and_names_the_problem() {
        assert_eq!(parse_ms_range("70000..600000"), Ok(MsRange { min: 70_000, max: 600_000 }));
        assert_eq!(parse_ms_range("5..5"), Ok(MsRange { min: 5, max: 5 }));
        let err = parse_ms_range("5..1").unwrap_err();
        assert!(err.contains("minimum 5 is greater than maximum 1"), "{err}");
        assert!(parse_ms_range("5-1").unwrap_err().contains("MIN..MAX"));
        assert!(parse_ms_range("a..1").unwrap_err().contains("minimum"));
    }

    #[test]
    fn fractions_and_rates_are_checked() {
        assert_eq!(parse_fraction("0.25"), Ok(0.25));
        assert!(parse_fraction("1.5").is_err());
        assert!(parse_fraction("-0.1").is_err());
        assert!(parse_rate("0").is_err());
        assert!(parse_rate("inf").is_err());
        assert_eq!(parse_rate("0.5"), Ok(0.5));
    }

    #[test]
    fn stride_permutes_the_ads() {
        for n in [1u64, 2, 10, 100, 1000, 97] {
            let stride = coprime_stride(n);
            let mut seen: Vec<u64> = (0..n).map(|r| r * stride % n).collect();
            seen.sort_unstable();
            assert_eq!(seen, (0..n).collect::<Vec<_>>(), "n = {n}");
        }
    }

    #[test]
    fn generated_events_round_trip_through_the_wire_format() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            options: GeneratorOptions,
        }
        let options = Cli::parse_from(["test", "--late-fraction", "0.1"]).options;
        let mut generator = Generator::new(&options, 10_000, 1000.0, Format::Jsonl).unwrap();
        let mut value = Vec::new();
        while let Some(Generated::Valid { event, .. }) = generator.next_item() {
            value.clear();
            crate::clicks::event::wire_event(&event, &mut value);
            assert_eq!(
                crate::clicks::event::parse_json(&value, value.len()),
                Ok(event),
                "{}",
                String::from_utf8_lossy(&value)
            );
        }
    }
}
