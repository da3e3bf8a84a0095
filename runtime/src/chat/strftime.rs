//! `strftime_now(fmt)`: templates (Llama 3.x, Granite, ...) stamp today's date
//! into the system prompt. The clock is read as UTC; the directives are the
//! C/Python ones such templates use, plus glibc's `%-d` style unpadded forms.

use std::time::{SystemTime, UNIX_EPOCH};

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const WEEKDAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];

/// A broken-down UTC time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DateTime {
    year: i64,
    /// 1..=12
    month: u32,
    /// 1..=31
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
    /// 0 = Monday
    weekday: u32,
    /// 1..=366
    day_of_year: u32,
}

impl DateTime {
    pub(crate) fn from_unix(secs: i64) -> DateTime {
        let days = secs.div_euclid(86_400);
        let rem = secs.rem_euclid(86_400) as u32;
        let (year, month, day) = civil_from_days(days);
        let jan1 = days_from_civil(year, 1, 1);
        DateTime {
            year,
            month,
            day,
            hour: rem / 3600,
            minute: rem / 60 % 60,
            second: rem % 60,
            // 1970-01-01 was a Thursday (index 3).
            weekday: (days + 3).rem_euclid(7) as u32,
            day_of_year: (days - jan1 + 1) as u32,
        }
    }

    pub(crate) fn now() -> DateTime {
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        DateTime::from_unix(secs)
    }

    /// Formats like C `strftime`; an unknown directive is an error rather
    /// than platform-dependent passthrough.
    pub(crate) fn format(&self, fmt: &str) -> Result<String, String> {
        let mut out = String::new();
        let mut chars = fmt.chars();
        while let Some(c) = chars.next() {
            if c != '%' {
                out.push(c);
                continue;
            }
            let mut spec = chars.next().ok_or("format ends with a lone '%'")?;
            let unpadded = spec == '-';
            if unpadded {
                spec = chars.next().ok_or("format ends with '%-'")?;
            }
            let num = |n: u32, width: usize| {
                if unpadded {
                    n.to_string()
                } else {
                    format!("{n:0width$}")
                }
            };
            let hour12 = match self.hour % 12 {
                0 => 12,
                h => h,
            };
            let month = MONTHS[(self.month - 1) as usize];
            let weekday = WEEKDAYS[self.weekday as usize];
            match spec {
                'Y' => out.push_str(&self.year.to_string()),
                'y' => out.push_str(&num(self.year.rem_euclid(100) as u32, 2)),
                'm' => out.push_str(&num(self.month, 2)),
                'd' => out.push_str(&num(self.day, 2)),
                'e' => out.push_str(&format!("{:2}", self.day)),
                'j' => out.push_str(&num(self.day_of_year, 3)),
                'H' => out.push_str(&num(self.hour, 2)),
                'I' => out.push_str(&num(hour12, 2)),
                'M' => out.push_str(&num(self.minute, 2)),
                'S' => out.push_str(&num(self.second, 2)),
                'p' => out.push_str(if self.hour < 12 { "AM" } else { "PM" }),
                'B' => out.push_str(month),
                'b' | 'h' => out.push_str(&month[..3]),
                'A' => out.push_str(weekday),
                'a' => out.push_str(&weekday[..3]),
                'u' => out.push_str(&(self.weekday + 1).to_string()),
                'w' => out.push_str(&((self.weekday + 1) % 7).to_string()),
                'F' => out.push_str(&format!("{}-{:02}-{:02}", self.year, self.month, self.day)),
                'T' => out.push_str(&format!(
                    "{:02}:{:02}:{:02}",
                    self.hour, self.minute, self.second
                )),
                'Z' => out.push_str("UTC"),
                'z' => out.push_str("+0000"),
                '%' => out.push('%'),
                other => return Err(format!("unsupported strftime directive '%{other}'")),
            }
        }
        Ok(out)
    }
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Inverse of [`civil_from_days`].
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::DateTime;

    #[test]
    fn formats_match_python_strftime() {
        // Expected strings from Python: datetime.fromtimestamp(t, timezone.utc).strftime(fmt).
        let t = DateTime::from_unix(1_700_000_000);
        assert_eq!(
            t.format("%Y-%m-%d %H:%M:%S").unwrap(),
            "2023-11-14 22:13:20"
        );
        assert_eq!(t.format("%d %b %Y").unwrap(), "14 Nov 2023");
        assert_eq!(
            t.format("%A, %B %-d, %Y %I %p %j").unwrap(),
            "Tuesday, November 14, 2023 10 PM 318"
        );
        let leap = DateTime::from_unix(951_782_400); // 2000-02-29 00:00:00
        assert_eq!(
            leap.format("%a %e %b %y %-H %%").unwrap(),
            "Tue 29 Feb 00 0 %"
        );
        let old = DateTime::from_unix(-86_400);
        assert_eq!(
            old.format("%F %T %u %w").unwrap(),
            "1969-12-31 00:00:00 3 3"
        );
        assert!(t.format("%Q").is_err());
        assert!(t.format("50%").is_err());
    }
}
