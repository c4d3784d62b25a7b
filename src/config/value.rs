//! Parsers for the value syntaxes fail2ban users already know: durations
//! (`10m`, `1h30m`, `-1`) and port lists (`smtp,submission`, `25`, `6000:6010`).

use std::collections::HashMap;
use std::time::Duration;

use crate::jail::{Bantime, PortRange, Protocol};

/// Parses `600`, `10m`, `1h30m`, `1d`, `1w`, `90s`; `None` if malformed or zero-free nonsense.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    if let Ok(secs) = text.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let mut total: u64 = 0;
    let mut digits = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        if c.is_whitespace() {
            continue;
        }
        let mut unit = String::from(c);
        while let Some(&n) = chars.peek() {
            if n.is_ascii_alphabetic() {
                unit.push(n);
                chars.next();
            } else {
                break;
            }
        }
        let scale: u64 = match unit.to_ascii_lowercase().as_str() {
            "s" | "sec" | "secs" | "second" | "seconds" => 1,
            "m" | "min" | "mins" | "minute" | "minutes" => 60,
            "h" | "hour" | "hours" => 3600,
            "d" | "day" | "days" => 86_400,
            "w" | "week" | "weeks" => 604_800,
            _ => return None,
        };
        let n: u64 = digits.parse().ok()?;
        digits.clear();
        total = total.checked_add(n.checked_mul(scale)?)?;
    }
    if !digits.is_empty() {
        // A trailing bare number ("1h30") is ambiguous: refuse rather than guess.
        return None;
    }
    Some(Duration::from_secs(total))
}

/// A bantime: a duration, or `-1` (any negative number) for permanent.
pub fn parse_bantime(text: &str) -> Option<Bantime> {
    let t = text.trim();
    if t.starts_with('-') {
        return t.parse::<i64>().ok().map(|_| Bantime::Permanent);
    }
    parse_duration(t).map(Bantime::For)
}

/// Port names from `/etc/services`, per protocol.
#[derive(Debug, Default)]
pub struct Services {
    by_name: HashMap<(String, Protocol), u16>,
}

impl Services {
    /// Reads `/etc/services`; a missing file leaves only numeric ports usable.
    pub fn system() -> Services {
        match std::fs::read_to_string("/etc/services") {
            Ok(text) => Services::parse(&text),
            Err(_) => Services::default(),
        }
    }

    /// Parses the services(5) format: `name port/proto [aliases...] [# comment]`.
    pub fn parse(text: &str) -> Services {
        let mut by_name = HashMap::new();
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or("");
            let mut words = line.split_whitespace();
            let (Some(name), Some(port_proto)) = (words.next(), words.next()) else {
                continue;
            };
            let Some((port, proto)) = port_proto.split_once('/') else {
                continue;
            };
            let proto = match proto {
                "tcp" => Protocol::Tcp,
                "udp" => Protocol::Udp,
                _ => continue,
            };
            let Ok(port) = port.parse::<u16>() else {
                continue;
            };
            for n in std::iter::once(name).chain(words) {
                by_name.entry((n.to_string(), proto)).or_insert(port);
            }
        }
        Services { by_name }
    }

    fn port(&self, word: &str, proto: Protocol) -> Option<u16> {
        if let Ok(n) = word.parse::<u16>() {
            return Some(n);
        }
        self.by_name.get(&(word.to_string(), proto)).copied()
    }

    /// One word of a port list: `smtp`, `25`, `6000:6010`, `6000-6010`.
    pub fn range(&self, word: &str, proto: Protocol) -> Result<PortRange, String> {
        let resolve = |w: &str| {
            self.port(w, proto).ok_or_else(|| {
                if w.chars().all(|c| c.is_ascii_digit()) {
                    format!("port {w} is out of range (1-65535)")
                } else {
                    format!("unknown port name {w:?} for {proto} (not in /etc/services)")
                }
            })
        };
        let (first, last) = match word.split_once([':', '-']) {
            Some((a, b)) if !a.is_empty() && !b.is_empty() && a.parse::<u16>().is_ok() => {
                (resolve(a)?, resolve(b)?)
            }
            _ => {
                let p = resolve(word)?;
                (p, p)
            }
        };
        if first == 0 || first > last {
            return Err(format!("bad port range {word:?}"));
        }
        Ok(PortRange { first, last })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let d = |s| parse_duration(s).map(|d| d.as_secs());
        assert_eq!(d("600"), Some(600));
        assert_eq!(d("10m"), Some(600));
        assert_eq!(d("1h"), Some(3600));
        assert_eq!(d("12h"), Some(43_200));
        assert_eq!(d("1d"), Some(86_400));
        assert_eq!(d("1w"), Some(604_800));
        assert_eq!(d("1h30m"), Some(5400));
        assert_eq!(d("2 days"), Some(172_800));
        assert_eq!(d("10x"), None);
        assert_eq!(d("1h30"), None);
        assert_eq!(d(""), None);
        assert_eq!(d("ten minutes"), None);
    }

    #[test]
    fn bantimes() {
        assert_eq!(parse_bantime("-1"), Some(Bantime::Permanent));
        assert_eq!(
            parse_bantime("1h"),
            Some(Bantime::For(Duration::from_secs(3600)))
        );
        assert_eq!(parse_bantime("-x"), None);
    }

    #[test]
    fn ports() {
        let s =
            Services::parse("smtp 25/tcp mail\nsieve\t4190/tcp # managesieve\nsyslog 514/udp\n");
        let r = |w| s.range(w, Protocol::Tcp);
        assert_eq!(
            r("smtp"),
            Ok(PortRange {
                first: 25,
                last: 25
            })
        );
        assert_eq!(
            r("mail"),
            Ok(PortRange {
                first: 25,
                last: 25
            })
        );
        assert_eq!(
            r("sieve"),
            Ok(PortRange {
                first: 4190,
                last: 4190
            })
        );
        assert_eq!(
            r("6000:6010"),
            Ok(PortRange {
                first: 6000,
                last: 6010
            })
        );
        assert_eq!(
            r("6000-6010"),
            Ok(PortRange {
                first: 6000,
                last: 6010
            })
        );
        assert!(r("syslog").is_err(), "udp-only name is not a tcp port");
        assert!(r("smpt").unwrap_err().contains("unknown port name"));
        assert!(r("70000").is_err());
        assert!(r("10:5").is_err());
        assert!(r("0").is_err());
    }
}
