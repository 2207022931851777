//! The health verdicts the singleton publishes in Envoy's shared data, and their wire format.
//!
//! The table is written under one key by the singleton service and read by every worker's HTTP
//! contexts. A second, 8-byte key holds only the generation, so a worker checks one small value
//! per request and decodes the table only when the generation moved.
//!
//! Format (UTF-8 text, one record per line, fields separated by one space):
//!
//! ```text
//! vigil-verdicts 1 <generation>
//! <cluster> <IP:port> <flags>
//! ```
//!
//! `<flags>` is one hexadecimal digit: bit 0 failed the active check, bit 1 degraded, bit 2
//! ejected by outlier detection, bit 3 not probed yet. Decoding rejects anything else: a wrong
//! magic or version, a missing or non-numeric generation, a line with the wrong number of
//! fields, an address that is not `IP:port`, unknown flag bits, a duplicate host.

use super::config::is_host_port;
use super::vec_map::VecMap;
use std::fmt;

const MAGIC: &str = "vigil-verdicts";
const VERSION: &str = "1";

/// One host's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Verdict {
    /// The active probes failed it (`/failed_active_hc`).
    pub failed_active: bool,
    /// Passing but degraded (slow, or `x-envoy-degraded`).
    pub degraded: bool,
    /// Ejected by outlier detection on real traffic.
    pub ejected: bool,
    /// Known but not probed yet.
    pub pending: bool,
}

impl Verdict {
    /// Whether traffic may go to the host.
    pub fn usable(&self) -> bool {
        !self.failed_active && !self.ejected
    }

    fn bits(self) -> u8 {
        u8::from(self.failed_active)
            | u8::from(self.degraded) << 1
            | u8::from(self.ejected) << 2
            | u8::from(self.pending) << 3
    }

    fn from_bits(bits: u8) -> Verdict {
        Verdict {
            failed_active: bits & 1 != 0,
            degraded: bits & 2 != 0,
            ejected: bits & 4 != 0,
            pending: bits & 8 != 0,
        }
    }
}

/// Every host's verdict at one generation, keyed by (cluster, `IP:port`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VerdictTable {
    pub generation: u64,
    pub hosts: VecMap<(String, String), Verdict>,
}

/// Why a published table could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    /// 1-based line number.
    pub line: usize,
    pub message: String,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "verdict table line {}: {}", self.line, self.message)
    }
}

impl std::error::Error for DecodeError {}

impl VerdictTable {
    /// The verdict on `host` of `cluster`, if the table knows it.
    pub fn get(&self, cluster: &str, host: &str) -> Option<Verdict> {
        self.hosts
            .get(&(cluster.to_string(), host.to_string()))
            .copied()
    }

    /// Hosts of `cluster` traffic may go to.
    pub fn usable_hosts<'a>(&'a self, cluster: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.hosts
            .iter()
            .filter(move |((c, _), v)| c == cluster && v.usable())
            .map(|((_, h), _)| h.as_str())
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = format!("{MAGIC} {VERSION} {}\n", self.generation);
        for ((cluster, host), verdict) in &self.hosts {
            out.push_str(&format!("{cluster} {host} {:x}\n", verdict.bits()));
        }
        out.into_bytes()
    }

    pub fn decode(bytes: &[u8]) -> Result<VerdictTable, DecodeError> {
        let err = |line, message: &str| DecodeError {
            line,
            message: message.to_string(),
        };
        let text = std::str::from_utf8(bytes).map_err(|_| err(1, "not UTF-8"))?;
        let body = text
            .strip_suffix('\n')
            .ok_or_else(|| err(1, "does not end with a newline (truncated?)"))?;
        let mut lines = body.split('\n');
        let header: Vec<&str> = lines.next().unwrap_or_default().split(' ').collect();
        let generation = match header[..] {
            [MAGIC, VERSION, generation] => generation
                .parse::<u64>()
                .map_err(|_| err(1, "the generation is not a number"))?,
            [MAGIC, _, _] => return Err(err(1, "unknown format version")),
            _ => return Err(err(1, "not a vigil verdict table")),
        };
        let mut hosts = VecMap::new();
        for (i, line) in lines.enumerate() {
            let n = i + 2;
            let fields: Vec<&str> = line.split(' ').collect();
            let [cluster, host, flags] = fields[..] else {
                return Err(err(n, "expected \"<cluster> <IP:port> <flags>\""));
            };
            if cluster.is_empty() {
                return Err(err(n, "empty cluster name"));
            }
            if !is_host_port(host) {
                return Err(err(n, "the host is not IP:port"));
            }
            let bits = match flags.as_bytes() {
                [digit] => (*digit as char)
                    .to_digit(16)
                    .ok_or_else(|| err(n, "flags are not a hex digit"))?,
                _ => return Err(err(n, "flags are one hex digit")),
            };
            let key = (cluster.to_string(), host.to_string());
            if hosts.insert(key, Verdict::from_bits(bits as u8)).is_some() {
                return Err(err(n, "host listed twice"));
            }
        }
        Ok(VerdictTable { generation, hosts })
    }
}

/// The generation key's value: 8 bytes, little endian.
pub fn encode_generation(generation: u64) -> [u8; 8] {
    generation.to_le_bytes()
}

/// Reads the generation key; `None` for anything but 8 bytes.
pub fn decode_generation(bytes: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(bytes).ok().map(u64::from_le_bytes)
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    fn table() -> VerdictTable {
        let mut hosts = VecMap::new();
        hosts.insert(("web".into(), "127.0.0.1:80".into()), Verdict::default());
        hosts.insert(
            ("web".into(), "127.0.0.2:80".into()),
            Verdict {
                failed_active: true,
                ejected: true,
                ..Verdict::default()
            },
        );
        hosts.insert(
            ("api".into(), "[::1]:9000".into()),
            Verdict {
                degraded: true,
                pending: true,
                ..Verdict::default()
            },
        );
        VerdictTable {
            generation: 42,
            hosts,
        }
    }

    #[test]
    fn round_trips() {
        let t = table();
        let bytes = t.encode();
        assert_eq!(
            String::from_utf8(bytes.clone()).unwrap(),
            "vigil-verdicts 1 42\napi [::1]:9000 a\nweb 127.0.0.1:80 0\nweb 127.0.0.2:80 5\n"
        );
        assert_eq!(VerdictTable::decode(&bytes).unwrap(), t);
        assert_eq!(
            t.usable_hosts("web").collect::<Vec<_>>(),
            vec!["127.0.0.1:80"]
        );
        assert!(t.get("api", "[::1]:9000").unwrap().usable());
        assert_eq!(t.get("api", "nope"), None);
    }

    #[test]
    fn an_empty_table_round_trips() {
        let t = VerdictTable::default();
        assert_eq!(VerdictTable::decode(&t.encode()).unwrap(), t);
    }

    #[test]
    fn garbage_is_rejected_with_the_line() {
        for (bytes, line, want) in [
            (&b""[..], 1, "newline"),
            (b"\xff\n", 1, "UTF-8"),
            (b"hello 1 2\n", 1, "not a vigil"),
            (b"vigil-verdicts 2 1\n", 1, "version"),
            (b"vigil-verdicts 1 x\n", 1, "generation"),
            (b"vigil-verdicts 1 1\nweb 127.0.0.1:80 0", 1, "newline"),
            (b"vigil-verdicts 1 1\nweb 127.0.0.1:80\n", 2, "expected"),
            (b"vigil-verdicts 1 1\nweb host:80 0\n", 2, "IP:port"),
            (b"vigil-verdicts 1 1\nweb 127.0.0.1:80 g\n", 2, "hex"),
            (
                b"vigil-verdicts 1 1\nweb 127.0.0.1:80 10\n",
                2,
                "one hex digit",
            ),
            (b"vigil-verdicts 1 1\n 127.0.0.1:80 0\n", 2, "empty cluster"),
            (
                b"vigil-verdicts 1 1\nweb 127.0.0.1:80 0\nweb 127.0.0.1:80 1\n",
                3,
                "twice",
            ),
            (b"vigil-verdicts 1 1\n\n", 2, "expected"),
        ] {
            let e = VerdictTable::decode(bytes).unwrap_err();
            assert_eq!(e.line, line, "{bytes:?}: {e}");
            assert!(e.message.contains(want), "{bytes:?}: {e}");
        }
    }

    #[test]
    fn generation_is_eight_bytes() {
        assert_eq!(decode_generation(&encode_generation(7)), Some(7));
        assert_eq!(decode_generation(b"1234"), None);
    }
}
