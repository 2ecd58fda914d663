//! Durations as written in dataflow specs: `250ms`, `5s`, `5m`, `1h`.

/// Parses a duration into milliseconds; the error says what a duration looks like.
pub fn parse_duration_ms(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let problem = || format!("`{text}` is not a duration (write a whole number and a unit: 250ms, 60s, 5m, 1h)");
    if digits.is_empty() {
        return Err(problem());
    }
    let value: u64 = digits.parse().map_err(|_| problem())?;
    let scale = match unit.trim() {
        "ms" => 1,
        "s" => 1_000,
        "m" | "min" => 60_000,
        "h" => 3_600_000,
        _ => return Err(problem()),
    };
    value.checked_mul(scale).ok_or_else(|| format!("`{text}` is too long a duration"))
}

/// Parses a command-line timeout (`--lock-timeout 2s`): a duration as above, more than zero
/// (a zero timeout would mean "none" to PostgreSQL and "at once" to a timer).
pub fn parse_timeout(text: &str) -> Result<std::time::Duration, String> {
    match parse_duration_ms(text)? {
        0 => Err(format!("`{}` is not a positive duration", text.trim())),
        ms => Ok(std::time::Duration::from_millis(ms)),
    }
}

/// Writes milliseconds back in the largest unit that divides them, for messages.
pub fn format_duration_ms(ms: u64) -> String {
    match ms {
        0 => "0s".into(),
        ms if ms % 3_600_000 == 0 => format!("{}h", ms / 3_600_000),
        ms if ms % 60_000 == 0 => format!("{}m", ms / 60_000),
        ms if ms % 1_000 == 0 => format!("{}s", ms / 1_000),
        ms => format!("{ms}ms"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(parse_duration_ms("250ms"), Ok(250));
        assert_eq!(parse_duration_ms("60s"), Ok(60_000));
        assert_eq!(parse_duration_ms("5m"), Ok(300_000));
        assert_eq!(parse_duration_ms("1h"), Ok(3_600_000));
        assert_eq!(parse_duration_ms("0s"), Ok(0));
    }

    #[test]
    fn rejects_what_is_not_a_duration() {
        for bad in ["", "60", "s", "5 minutes", "-5s", "1.5s", "5x"] {
            assert!(parse_duration_ms(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn formats_back() {
        assert_eq!(format_duration_ms(300_000), "5m");
        assert_eq!(format_duration_ms(61_000), "61s");
        assert_eq!(format_duration_ms(1_500), "1500ms");
    }
}
