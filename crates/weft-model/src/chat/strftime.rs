//! `strftime` on the fixed date chat templates see through
//! `strftime_now` ([`super::STRFTIME_NOW_DATE`]).

/// `datetime(2024, 7, 26).strftime(format)` as Python on glibc renders it
/// ([`super::STRFTIME_NOW_DATE`], a Friday, day 208 of a leap year; ISO week
/// 30): the C standard and POSIX conversions, with glibc's `-` (no
/// padding), `_` (space padding), `0` and `^` (upper case) flags. `%z` and
/// `%Z` are empty (a naive datetime); `%s` is the date's Unix time in UTC.
/// An unknown conversion is written as it stands, as glibc does.
pub fn strftime_fixed(format: &str) -> String {
    const YEAR: i64 = 2024;
    const MONTH: i64 = 7;
    const DAY: i64 = 26;
    const WEEKDAY_FROM_MONDAY: i64 = 4; // Friday
    const YEAR_DAY: i64 = 208;
    const UNIX_TIME: i64 = 1_721_952_000;
    enum Field {
        Number(i64, usize, char), // value, width, default padding
        Text(String),
    }
    let mut out = String::new();
    let mut chars = format.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let mut flag = None;
        if let Some(&f) = chars.peek() {
            if matches!(f, '-' | '_' | '0' | '^' | '#') {
                flag = Some(f);
                chars.next();
            }
        }
        let Some(conversion) = chars.next() else {
            out.push('%');
            if let Some(f) = flag {
                out.push(f);
            }
            break;
        };
        let text = |s: &str| Field::Text(s.to_string());
        let field = match conversion {
            'a' => text("Fri"),
            'A' => text("Friday"),
            'b' | 'h' => text("Jul"),
            'B' => text("July"),
            'c' => text("Fri Jul 26 00:00:00 2024"),
            'C' => Field::Number(YEAR / 100, 2, '0'),
            'd' => Field::Number(DAY, 2, '0'),
            'D' | 'x' => text("07/26/24"),
            'e' => Field::Number(DAY, 2, ' '),
            'F' => text("2024-07-26"),
            'g' => Field::Number(YEAR % 100, 2, '0'),
            'G' => Field::Number(YEAR, 4, '0'),
            'H' => Field::Number(0, 2, '0'),
            'I' => Field::Number(12, 2, '0'),
            'j' => Field::Number(YEAR_DAY, 3, '0'),
            'k' => Field::Number(0, 2, ' '),
            'l' => Field::Number(12, 2, ' '),
            'm' => Field::Number(MONTH, 2, '0'),
            'M' | 'S' => Field::Number(0, 2, '0'),
            'n' => text("\n"),
            'p' => text("AM"),
            'P' => text("am"),
            'r' => text("12:00:00 AM"),
            'R' => text("00:00"),
            's' => Field::Number(UNIX_TIME, 1, '0'),
            't' => text("\t"),
            'T' | 'X' => text("00:00:00"),
            'u' => Field::Number(WEEKDAY_FROM_MONDAY + 1, 1, '0'),
            'U' => Field::Number(29, 2, '0'),
            'V' | 'W' => Field::Number(30, 2, '0'),
            'w' => Field::Number((WEEKDAY_FROM_MONDAY + 1) % 7, 1, '0'),
            'y' => Field::Number(YEAR % 100, 2, '0'),
            'Y' => Field::Number(YEAR, 1, '0'),
            'z' | 'Z' => text(""),
            '%' => text("%"),
            other => {
                out.push('%');
                if let Some(f) = flag {
                    out.push(f);
                }
                out.push(other);
                continue;
            }
        };
        match field {
            Field::Text(s) if flag == Some('^') => out.push_str(&s.to_uppercase()),
            Field::Text(s) => out.push_str(&s),
            Field::Number(n, width, pad) => {
                let digits = n.to_string();
                let pad = match flag {
                    Some('-') => None,
                    Some('_') => Some(' '),
                    Some('0') => Some('0'),
                    _ => Some(pad),
                };
                if let Some(pad) = pad {
                    for _ in digits.len()..width {
                        out.push(pad);
                    }
                }
                out.push_str(&digits);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strftime_matches_python_on_the_fixed_date() {
        // Python 3.11 on glibc: datetime.datetime(2024, 7, 26).strftime(...)
        let format = "%a|%A|%b|%B|%c|%C|%d|%D|%e|%F|%g|%G|%h|%H|%I|%j|%k|%l|%m|%M|%n|%p|%P|%r|%R|%S|%t|%T|%u|%U|%V|%w|%W|%x|%X|%y|%Y|%z|%Z|%%|%-d|%-m|%-H|%-I|%-j|%_m|%^a|%^B|%Q|%0e|%s";
        let python = "Fri|Friday|Jul|July|Fri Jul 26 00:00:00 2024|20|26|07/26/24|26|2024-07-26|24|2024|Jul|00|12|208| 0|12|07|00|\n|AM|am|12:00:00 AM|00:00|00|\t|00:00:00|5|29|30|5|30|07/26/24|00:00:00|24|2024|||%|26|7|0|12|208| 7|FRI|JULY|%Q|26|1721952000";
        assert_eq!(strftime_fixed(format), python);
        assert_eq!(strftime_fixed("%d %b %Y"), "26 Jul 2024");
        assert_eq!(strftime_fixed("%B %d, %Y"), "July 26, 2024");
    }
}
