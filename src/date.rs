//! Calendar dates from Unix time, in UTC: the one copy of the day-count
//! arithmetic (the chat templates' `strftime_now` and the HTML report's
//! timestamps both print dates; HTTP dates are the `httpdate` crate's).

/// A moment split into its UTC calendar fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Utc {
    pub year: i64,
    /// 1..=12.
    pub month: u32,
    /// 1..=31.
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
}

impl Utc {
    /// The fields of `unix` seconds since 1970-01-01 00:00:00 UTC.
    pub fn from_unix(unix: u64) -> Utc {
        let days = (unix / 86_400) as i64;
        let rem = (unix % 86_400) as u32;
        // Days → (year, month, day) on the proleptic Gregorian calendar,
        // counted in 400-year eras that start on 1 March so the leap day
        // falls at the end of a year (Howard Hinnant's civil_from_days).
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        Utc {
            year: yoe + era * 400 + i64::from(month <= 2),
            month,
            day,
            hour: rem / 3600,
            minute: rem % 3600 / 60,
            second: rem % 60,
        }
    }

    /// Now (the epoch if the clock is set before it).
    pub fn now() -> Utc {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Utc::from_unix(secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calendar_fields_match_known_dates() {
        let at = |unix| {
            let u = Utc::from_unix(unix);
            (u.year, u.month, u.day, u.hour, u.minute, u.second)
        };
        assert_eq!(at(0), (1970, 1, 1, 0, 0, 0));
        assert_eq!(at(951_782_400), (2000, 2, 29, 0, 0, 0));
        assert_eq!(at(784_111_777), (1994, 11, 6, 8, 49, 37));
        assert_eq!(at(1_796_128_558), (2026, 12, 1, 12, 35, 58));
        // The day after a century year that is not a leap year.
        assert_eq!(at(4_107_542_400), (2100, 3, 1, 0, 0, 0));
    }

    #[test]
    fn agrees_with_httpdate_on_every_day_of_four_centuries() {
        for day in (0..146_097u64).step_by(7) {
            let unix = day * 86_400 + 45_296;
            let u = Utc::from_unix(unix);
            let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix);
            let http = httpdate::fmt_http_date(t);
            // `Sun, 06 Nov 1994 08:49:37 GMT`
            let want = format!(
                "{:02} {} {} 12:34:56 GMT",
                u.day,
                MONTHS[u.month as usize - 1],
                u.year
            );
            assert!(http.ends_with(&want), "{http} vs {want}");
        }
    }

    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
}
