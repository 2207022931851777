//! The decompressor filter's configuration ([`Decompressor`], read by `config::decompressor`)
//! and its header rules, as Envoy 1.36.2's `DecompressorFilter` applies them to a request or a
//! response head that has a body: [`Decompressor::decides`] (the direction enabled, no
//! `cache-control: no-transform` unless ignored, the configured coding first in
//! `content-encoding`), [`remaining_codings`] (the first coding removed, `content-length` goes),
//! and [`add_accept_encoding`] (the request's advertisement). The companion inflates the bodies.

/// The gzip coding, the only library vigil implements.
pub const GZIP: &str = "gzip";

/// The filter's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decompressor {
    /// `decompressor_library.name`: the stats' middle part.
    pub library_name: String,
    /// The gzip library's `chunk_size` (4096): zlib's output buffer, the step the inflate ratio
    /// is checked at.
    pub chunk_size: u32,
    /// The gzip library's `max_inflate_ratio` (100): output bigger than this many times a data
    /// frame's input stops the frame's inflating (a decompression bomb).
    pub max_inflate_ratio: u32,
    /// The gzip library's `window_bits` (15, in 9..=15): zlib's window; a stream whose
    /// back-references reach further fails, as in Envoy.
    pub window_bits: u8,
    pub request: Direction,
    pub response: Direction,
    /// `request_direction_config.advertise_accept_encoding` (true): with response decompression
    /// on, requests carry `gzip` in `accept-encoding`.
    pub advertise_accept_encoding: bool,
}

/// `CommonDirectionConfig`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Direction {
    /// `enabled.default_value` (true without `enabled`).
    pub enabled: bool,
    /// `ignore_no_transform_header`.
    pub ignore_no_transform_header: bool,
}

impl Default for Direction {
    fn default() -> Self {
        Direction {
            enabled: true,
            ignore_no_transform_header: false,
        }
    }
}

impl Decompressor {
    /// The stat name `http.<hcm prefix>.decompressor.<library name>.gzip.<rest>`.
    pub fn stat_name(&self, hcm_prefix: &str, rest: &str) -> String {
        format!(
            "http.{hcm_prefix}.decompressor.{}.gzip.{rest}",
            self.library_name
        )
    }

    /// Every counter Envoy creates with the filter (shown at 0 from the start).
    pub fn counters(&self, hcm_prefix: &str) -> Vec<String> {
        let mut out = Vec::new();
        for direction in ["request", "response"] {
            for counter in DIRECTION_COUNTERS {
                out.push(self.stat_name(hcm_prefix, &format!("{direction}.{counter}")));
            }
        }
        for counter in LIBRARY_COUNTERS {
            out.push(self.stat_name(hcm_prefix, &format!("decompressor_library.{counter}")));
        }
        out
    }

    /// Whether a head with a body is decompressed in `direction` (`maybeInitDecompress`): the
    /// direction is enabled, `cache-control` has no `no-transform` token (unless ignored), and
    /// the first coding of `content-encoding` is gzip (any case, any spaces). `content_encoding`
    /// is the header's values joined with `,`, as Envoy's header map holds them.
    pub fn decides(
        &self,
        direction: &Direction,
        cache_control: Option<&str>,
        content_encoding: Option<&str>,
    ) -> bool {
        let no_transform = !direction.ignore_no_transform_header
            && cache_control.is_some_and(|value| {
                value
                    .split(',')
                    .any(|token| token.trim().eq_ignore_ascii_case("no-transform"))
            });
        direction.enabled
            && !no_transform
            && content_encoding.is_some_and(|value| {
                value
                    .split(',')
                    .next()
                    .is_some_and(|first| first.trim().eq_ignore_ascii_case(GZIP))
            })
    }
}

/// The per-direction counters.
pub const DIRECTION_COUNTERS: [&str; 4] = [
    "decompressed",
    "not_decompressed",
    "total_compressed_bytes",
    "total_uncompressed_bytes",
];

/// The gzip library's counters (`decompressor_library.<name>`).
pub const LIBRARY_COUNTERS: [&str; 6] = [
    "zlib_buf_error",
    "zlib_data_error",
    "zlib_errno",
    "zlib_mem_error",
    "zlib_stream_error",
    "zlib_version_error",
];

/// `content-encoding` once its first coding is decoded (`modifyContentEncoding`): the rest,
/// trimmed, or `None` (the header goes) when nothing is left after the first.
pub fn remaining_codings(content_encoding: &str) -> Option<String> {
    let (_, rest) = content_encoding.split_once(',')?;
    Some(rest.trim().to_string())
}

/// `HeaderUtility::addEncodingToAcceptEncoding`: the header's codings (split on `,`, each
/// trimmed) without any `gzip` (with or without parameters), then `gzip`, joined with `,`.
pub fn add_accept_encoding(accept_encoding: Option<&str>) -> String {
    let mut kept: Vec<&str> = Vec::new();
    if let Some(value) = accept_encoding {
        for coding in value.split(',') {
            let name = coding.split(';').next().unwrap_or("").trim();
            if name != GZIP {
                kept.push(coding.trim());
            }
        }
    }
    kept.push(GZIP);
    kept.join(",")
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    fn config() -> Decompressor {
        Decompressor {
            library_name: "gz".into(),
            chunk_size: 4096,
            max_inflate_ratio: 100,
            window_bits: 15,
            request: Direction::default(),
            response: Direction::default(),
            advertise_accept_encoding: true,
        }
    }

    #[test]
    fn the_first_coding_decides_and_no_transform_stops_it() {
        let c = config();
        let on = Direction::default();
        assert!(c.decides(&on, None, Some("gzip")));
        assert!(c.decides(&on, None, Some(" GZip , br")));
        assert!(!c.decides(&on, None, Some("br, gzip")));
        assert!(!c.decides(&on, None, Some("deflate")));
        assert!(!c.decides(&on, None, None));
        assert!(!c.decides(&on, Some("max-age=3, No-Transform"), Some("gzip")));
        let ignoring = Direction {
            ignore_no_transform_header: true,
            ..on
        };
        assert!(c.decides(&ignoring, Some("no-transform"), Some("gzip")));
        let off = Direction {
            enabled: false,
            ..on
        };
        assert!(!c.decides(&off, None, Some("gzip")));
        assert_eq!(
            c.stat_name("h", "request.decompressed"),
            "http.h.decompressor.gz.gzip.request.decompressed"
        );
        assert_eq!(c.counters("h").len(), 14);
    }

    #[test]
    fn codings_and_advertisements_are_rewritten_as_envoy_does() {
        assert_eq!(remaining_codings("gzip"), None);
        assert_eq!(remaining_codings("gzip, br").as_deref(), Some("br"));
        assert_eq!(
            remaining_codings("gzip,br, zstd").as_deref(),
            Some("br, zstd")
        );
        assert_eq!(add_accept_encoding(None), "gzip");
        assert_eq!(
            add_accept_encoding(Some("br;q=0.5, gzip;q=0.2, deflate")),
            "br;q=0.5,deflate,gzip"
        );
        assert_eq!(add_accept_encoding(Some("gzip")), "gzip");
    }
}
