//! A connection manager's `access_log` entries: the sinks vigil writes (file, stdout, stderr)
//! and their `log_format` (text or JSON, parsed with [`crate::substitution`]), Envoy's default
//! format when none is given.

use super::schema::*;
use crate::protojson::{Ctx, FieldPath, MIN_LEN_1, Obj, base64, describe, string};
use crate::substitution::{FormatPiece, parse_format};
use serde_json::{Map, Value};

/// One `access_log` entry of a connection manager (`config.accesslog.v3.AccessLog`).
#[derive(Debug, Clone, PartialEq)]
pub struct AccessLog {
    /// `name` (may be empty).
    pub name: String,
    pub sink: AccessLogSink,
    pub format: LogFormat,
}

/// Where an access log goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLogSink {
    /// `envoy.extensions.access_loggers.file.v3.FileAccessLog`: appended to `path`.
    File(String),
    /// `envoy.extensions.access_loggers.stream.v3.StdoutAccessLog`.
    Stdout,
    /// `envoy.extensions.access_loggers.stream.v3.StderrAccessLog`.
    Stderr,
}

/// A parsed `log_format` (`config.core.v3.SubstitutionFormatString`); Envoy's default text
/// format ([`DEFAULT_ACCESS_LOG_FORMAT`]) when none is given.
#[derive(Debug, Clone, PartialEq)]
pub struct LogFormat {
    pub kind: LogFormatKind,
    /// `omit_empty_values`: a missing value is written as nothing (text) or its key is left out
    /// (JSON), instead of `-` / `null`.
    pub omit_empty_values: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum LogFormatKind {
    /// `text_format` / `text_format_source` (one line per request; the text carries its own
    /// newline, as in Envoy).
    Text(Vec<FormatPiece>),
    /// `json_format`: one JSON object per line, keys in the order written (or sorted with
    /// `json_format_options.sort_properties`).
    Json(Vec<(String, JsonFormatValue)>),
}

/// One value of a `json_format` dictionary.
#[derive(Debug, Clone, PartialEq)]
pub enum JsonFormatValue {
    /// A string with command operators. A string that is exactly one operator keeps the
    /// operator's type (numbers stay numbers, a missing value is `null`), as Envoy does.
    Format(Vec<FormatPiece>),
    /// Numbers, booleans and `null`: written as given.
    Literal(Value),
    /// A nested dictionary.
    Object(Vec<(String, JsonFormatValue)>),
}

/// Envoy's access log format when `log_format` is not given (`DEFAULT_FORMAT` in Envoy's
/// `substitution_format_string.cc`).
pub const DEFAULT_ACCESS_LOG_FORMAT: &str = "[%START_TIME%] \"%REQ(:METHOD)% \
     %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% \
     %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \
     \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \
     \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\"\n";

const FILE_ACCESS_LOG_TYPE: &str = "envoy.extensions.access_loggers.file.v3.FileAccessLog";
const STDOUT_ACCESS_LOG_TYPE: &str = "envoy.extensions.access_loggers.stream.v3.StdoutAccessLog";
const STDERR_ACCESS_LOG_TYPE: &str = "envoy.extensions.access_loggers.stream.v3.StderrAccessLog";

/// One `access_log` entry: file, stdout and stderr loggers are read (format parsed); other
/// loggers (gRPC, OpenTelemetry, ...) are skipped with a warning.
pub(super) fn access_log(cx: &mut Ctx, path: FieldPath, value: &Value) -> Option<AccessLog> {
    let mut o = Obj::new(cx, path.clone(), value, &ACCESS_LOG)?;
    let name = o.string(cx, "name").unwrap_or_default();
    let typed = o.any(cx, "typed_config");
    o.finish(cx);
    let Some(typed) = typed.filter(|t| !t.is_empty()) else {
        cx.invalid(
            &path.field("typed_config"),
            format!("Didn't find a registered implementation for '{name}' with type URL: ''"),
        );
        return None;
    };
    let (sink, format) = if typed.is(FILE_ACCESS_LOG_TYPE) {
        let mut f = typed.obj(cx, &FILE_ACCESS_LOG);
        let file = f.required_string(cx, "path", MIN_LEN_1);
        let format = if let Some((p, v)) = f.take("format") {
            string(cx, &p, v).and_then(|text| text_format(cx, &p, &text, false))
        } else if let Some((p, v)) = f
            .take("json_format")
            .or_else(|| f.take("typed_json_format"))
        {
            json_format(cx, &p, v, false, false)
        } else {
            f.message(cx, "log_format", &SUBSTITUTION_FORMAT_STRING)
                .map(|lf| substitution_format(cx, lf))
                .unwrap_or_else(|| Some(default_format()))
        };
        f.finish(cx);
        (AccessLogSink::File(file?), format?)
    } else if typed.is(STDOUT_ACCESS_LOG_TYPE) || typed.is(STDERR_ACCESS_LOG_TYPE) {
        let mut f = typed.obj(cx, &STREAM_ACCESS_LOG);
        let format = f
            .message(cx, "log_format", &SUBSTITUTION_FORMAT_STRING)
            .map(|lf| substitution_format(cx, lf))
            .unwrap_or_else(|| Some(default_format()));
        f.finish(cx);
        let sink = if typed.is(STDOUT_ACCESS_LOG_TYPE) {
            AccessLogSink::Stdout
        } else {
            AccessLogSink::Stderr
        };
        (sink, format?)
    } else {
        cx.warn(
            &typed.path,
            format!(
                "{}: only file, stdout and stderr access logs are written by vigil; ignored",
                typed.type_name
            ),
        );
        return None;
    };
    Some(AccessLog { name, sink, format })
}

fn default_format() -> LogFormat {
    let mut cx = Ctx::default();
    let pieces =
        parse_format(&mut cx, &FieldPath::root(), DEFAULT_ACCESS_LOG_FORMAT).unwrap_or_default();
    LogFormat {
        kind: LogFormatKind::Text(pieces),
        omit_empty_values: false,
    }
}

/// A `SubstitutionFormatString`.
fn substitution_format(cx: &mut Ctx, mut o: Obj) -> Option<LogFormat> {
    let omit = o.bool(cx, "omit_empty_values").unwrap_or(false);
    let sort = o
        .message(cx, "json_format_options", &JSON_FORMAT_OPTIONS)
        .map(|mut j| {
            let sort = j.bool(cx, "sort_properties").unwrap_or(false);
            j.finish(cx);
            sort
        })
        .unwrap_or(false);
    let format = if let Some((p, v)) = o.take("text_format") {
        string(cx, &p, v).and_then(|text| text_format(cx, &p, &text, omit))
    } else if let Some((p, v)) = o.take("json_format") {
        json_format(cx, &p, v, omit, sort)
    } else if let Some(mut source) = o.message(cx, "text_format_source", &FORMAT_SOURCE) {
        let p = source.path.clone();
        let text = if let Some(text) = source.string(cx, "inline_string") {
            Some(text)
        } else if let Some((bp, v)) = source.take("inline_bytes") {
            let decoded = string(cx, &bp, v)
                .and_then(|b| base64(&b))
                .and_then(|b| String::from_utf8(b).ok());
            if decoded.is_none() {
                cx.invalid(&bp, "expected base64 of UTF-8 text");
            }
            decoded
        } else {
            None
        };
        source.finish(cx);
        text.and_then(|text| text_format(cx, &p, &text, omit))
    } else {
        // Envoy: a SubstitutionFormatString without a format is the default text format.
        Some(LogFormat {
            omit_empty_values: omit,
            ..default_format()
        })
    };
    o.finish(cx);
    format
}

fn text_format(cx: &mut Ctx, path: &FieldPath, text: &str, omit: bool) -> Option<LogFormat> {
    Some(LogFormat {
        kind: LogFormatKind::Text(parse_format(cx, path, text)?),
        omit_empty_values: omit,
    })
}

fn json_format(
    cx: &mut Ctx,
    path: &FieldPath,
    value: &Value,
    omit: bool,
    sort: bool,
) -> Option<LogFormat> {
    let Value::Object(map) = value else {
        cx.invalid(
            path,
            format!(
                "expected a mapping (google.protobuf.Struct), found {}",
                describe(value)
            ),
        );
        return None;
    };
    Some(LogFormat {
        kind: LogFormatKind::Json(json_entries(cx, path, map, sort)?),
        omit_empty_values: omit,
    })
}

fn json_entries(
    cx: &mut Ctx,
    path: &FieldPath,
    map: &Map<String, Value>,
    sort: bool,
) -> Option<Vec<(String, JsonFormatValue)>> {
    let errors = cx.errors.len();
    let mut out = Vec::new();
    for (key, value) in map {
        let p = path.field(key);
        let entry = match value {
            Value::String(text) => parse_format(cx, &p, text).map(JsonFormatValue::Format),
            Value::Object(inner) => json_entries(cx, &p, inner, sort).map(JsonFormatValue::Object),
            Value::Array(_) => {
                cx.invalid(
                    &p,
                    "Only string values, nested structs, list values and number values are \
                     supported in structured access log format: lists are not supported by vigil",
                );
                None
            }
            literal => Some(JsonFormatValue::Literal(literal.clone())),
        };
        if let Some(entry) = entry {
            out.push((key.clone(), entry));
        }
    }
    if sort {
        out.sort_by(|a, b| a.0.cmp(&b.0));
    }
    (cx.errors.len() == errors).then_some(out)
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::config::{ErrorKind, from_value};
    use crate::substitution::{FormatOperator, FormatPiece};
    use serde_json::json;

    use super::super::connection_manager::tests::{bootstrap, errors};
    fn file_log(log_format: Value) -> Value {
        let mut typed = json!({"@type":
            "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
            "path": "/dev/null"});
        if !log_format.is_null() {
            typed["log_format"] = log_format;
        }
        json!({"access_log": [{"name": "envoy.access_loggers.file", "typed_config": typed}]})
    }

    fn access_logs(v: &Value) -> Vec<AccessLog> {
        from_value(v).unwrap().bootstrap.listeners[0].http[0]
            .access_log
            .clone()
    }

    #[test]
    fn access_logs_default_to_envoys_format() {
        let logs = access_logs(&bootstrap(file_log(Value::Null), vec![]));
        assert_eq!(logs[0].sink, AccessLogSink::File("/dev/null".into()));
        let LogFormatKind::Text(pieces) = &logs[0].format.kind else {
            panic!("text expected");
        };
        assert_eq!(pieces[0], FormatPiece::Literal("[".into()));
        assert_eq!(
            pieces[3],
            FormatPiece::Command {
                operator: FormatOperator::RequestHeader {
                    name: ":method".into(),
                    alternative: None
                },
                max_length: None
            }
        );
        assert_eq!(
            pieces[5],
            FormatPiece::Command {
                operator: FormatOperator::RequestHeader {
                    name: "x-envoy-original-path".into(),
                    alternative: Some(":path".into())
                },
                max_length: None
            }
        );
        assert_eq!(pieces.last(), Some(&FormatPiece::Literal("\"\n".into())));
        let count = pieces
            .iter()
            .filter(|p| matches!(p, FormatPiece::Command { .. }))
            .count();
        assert_eq!(count, 15);
    }

    #[test]
    fn access_log_formats_parse_with_envoys_grammar() {
        let text = json!({"text_format_source": {"inline_string":
            "%REQ(X-A?X-B):3% 100%% %START_TIME(%s)% %RESPONSE_CODE%\n"}});
        let logs = access_logs(&bootstrap(file_log(text), vec![]));
        let LogFormatKind::Text(pieces) = &logs[0].format.kind else {
            panic!("text expected");
        };
        assert_eq!(
            pieces,
            &vec![
                FormatPiece::Command {
                    operator: FormatOperator::RequestHeader {
                        name: "x-a".into(),
                        alternative: Some("x-b".into())
                    },
                    max_length: Some(3)
                },
                FormatPiece::Literal(" 100% ".into()),
                FormatPiece::Command {
                    operator: FormatOperator::StartTime(Some("%s".into())),
                    max_length: None
                },
                FormatPiece::Literal(" ".into()),
                FormatPiece::Command {
                    operator: FormatOperator::ResponseCode,
                    max_length: None
                },
                FormatPiece::Literal("\n".into()),
            ]
        );
        let json = json!({"json_format": {"code": "%RESPONSE_CODE%", "n": 1,
            "nested": {"up": "%UPSTREAM_HOST%"}}, "omit_empty_values": true});
        let logs = access_logs(&bootstrap(file_log(json), vec![]));
        assert!(logs[0].format.omit_empty_values);
        let LogFormatKind::Json(entries) = &logs[0].format.kind else {
            panic!("json expected");
        };
        assert_eq!(entries.len(), 3);
        assert!(matches!(&entries[2].1, JsonFormatValue::Object(inner) if inner.len() == 1));
    }

    #[test]
    fn bad_access_log_formats_name_the_operator() {
        let cases = [
            (
                "%NOT_AN_OPERATOR%",
                ErrorKind::Invalid,
                "Not supported field in StreamInfo: NOT_AN_OPERATOR",
            ),
            (
                "%CONNECTION_ID%",
                ErrorKind::Unsupported,
                "%CONNECTION_ID% is not implemented",
            ),
            (
                "50 % off",
                ErrorKind::Invalid,
                "Couldn't find valid command at position 3",
            ),
            ("%REQ%", ErrorKind::Invalid, "REQ requires parameters"),
        ];
        for (format, kind, message) in cases {
            let v = bootstrap(file_log(json!({"text_format": format})), vec![]);
            let errors = errors(&v);
            assert_eq!(errors[0].0, kind, "{format}: {errors:?}");
            assert!(errors[0].1.contains(message), "{format}: {errors:?}");
            assert!(
                errors[0]
                    .1
                    .contains("access_log[0].typed_config.log_format.text_format")
            );
        }
    }
}
