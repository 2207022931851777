//! Envoy's substitution format strings (`%REQ(x-user)%`, `%START_TIME(%s)%`, ...): the command
//! operators vigil evaluates ([`FormatOperator`]) and the parser of a format string into
//! [`FormatPiece`]s, with Envoy's grammar and error messages. Access log formats and header values
//! are both written in it; the shells evaluate the pieces per request.

use crate::protojson::{Ctx, FieldPath};

/// A piece of a format string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FormatPiece {
    Literal(String),
    /// `%OPERATOR%`, `%OPERATOR(args)%`, with an optional `:max_length`.
    Command {
        operator: FormatOperator,
        max_length: Option<usize>,
    },
}

/// The command operators vigil evaluates. Envoy knows more; those are refused at load time
/// (named), unknown names too (Envoy refuses those as well).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FormatOperator {
    /// `%START_TIME%` (`%Y-%m-%dT%H:%M:%E3SZ`, UTC) or `%START_TIME(strftime)%`.
    StartTime(Option<String>),
    /// `%REQ(H?ALT)%` / `%REQUEST_HEADER(...)%`: lowercased names; `:method`, `:path`,
    /// `:authority`, `:scheme` are the request's own.
    RequestHeader {
        name: String,
        alternative: Option<String>,
    },
    /// `%RESP(H?ALT)%` / `%RESPONSE_HEADER(...)%`.
    ResponseHeader {
        name: String,
        alternative: Option<String>,
    },
    /// `%TRAILER(...)%` / `%RESPONSE_TRAILER(...)%`: vigil's proxy does not forward trailers,
    /// so always missing.
    ResponseTrailer,
    /// `%PROTOCOL%`: `HTTP/1.1`, `HTTP/2`.
    Protocol,
    ResponseCode,
    ResponseCodeDetails,
    /// `%RESPONSE_FLAGS%` (short: `UH`, `UF`, `UT`, `NR`, ...).
    ResponseFlags,
    /// `%RESPONSE_FLAGS_LONG%` (`NoHealthyUpstream`, ...).
    ResponseFlagsLong,
    BytesReceived,
    BytesSent,
    /// `%DURATION%`: milliseconds from the first request byte to the last response byte.
    Duration,
    /// `%REQUEST_DURATION%`: until the whole request was read.
    RequestDuration,
    /// `%RESPONSE_DURATION%`: until the response headers.
    ResponseDuration,
    UpstreamHost,
    UpstreamCluster,
    /// `%UPSTREAM_TRANSPORT_FAILURE_REASON%`.
    UpstreamTransportFailureReason,
    /// `%UPSTREAM_REQUEST_ATTEMPT_COUNT%`.
    UpstreamRequestAttemptCount,
    DownstreamRemoteAddress,
    DownstreamRemoteAddressWithoutPort,
    DownstreamLocalAddress,
    DownstreamLocalAddressWithoutPort,
    RouteName,
    /// `%HOSTNAME%`: the machine's host name.
    Hostname,
}

/// Envoy's command operators vigil does not evaluate (accepted by Envoy, refused here with
/// their name so nothing is silently logged as `-`).
const UNSUPPORTED_OPERATORS: [&str; 40] = [
    "REQUEST_TX_DURATION",
    "RESPONSE_TX_DURATION",
    "DOWNSTREAM_HANDSHAKE_DURATION",
    "ROUNDTRIP_DURATION",
    "BYTES_RETRANSMITTED",
    "PACKETS_RETRANSMITTED",
    "UPSTREAM_WIRE_BYTES_SENT",
    "UPSTREAM_WIRE_BYTES_RECEIVED",
    "UPSTREAM_HEADER_BYTES_SENT",
    "UPSTREAM_HEADER_BYTES_RECEIVED",
    "DOWNSTREAM_WIRE_BYTES_SENT",
    "DOWNSTREAM_WIRE_BYTES_RECEIVED",
    "DOWNSTREAM_HEADER_BYTES_SENT",
    "DOWNSTREAM_HEADER_BYTES_RECEIVED",
    "UPSTREAM_LOCAL_ADDRESS",
    "UPSTREAM_LOCAL_ADDRESS_WITHOUT_PORT",
    "UPSTREAM_LOCAL_PORT",
    "UPSTREAM_REMOTE_ADDRESS",
    "UPSTREAM_REMOTE_ADDRESS_WITHOUT_PORT",
    "UPSTREAM_REMOTE_PORT",
    "DOWNSTREAM_REMOTE_PORT",
    "DOWNSTREAM_LOCAL_PORT",
    "DOWNSTREAM_DIRECT_REMOTE_ADDRESS",
    "DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT",
    "CONNECTION_ID",
    "UPSTREAM_CONNECTION_ID",
    "REQUESTED_SERVER_NAME",
    "DYNAMIC_METADATA",
    "CLUSTER_METADATA",
    "UPSTREAM_METADATA",
    "FILTER_STATE",
    "UPSTREAM_FILTER_STATE",
    "DOWNSTREAM_PEER_SUBJECT",
    "DOWNSTREAM_TLS_VERSION",
    "GRPC_STATUS",
    "STREAM_ID",
    "LOCAL_REPLY_BODY",
    "ACCESS_LOG_TYPE",
    "CONNECTION_TERMINATION_DETAILS",
    "VIRTUAL_CLUSTER_NAME",
];

/// Parses an access log format string with Envoy's grammar: `%NAME%`, `%NAME(args)%`, either
/// with `:max_length`; `%%` is a literal `%`. Every problem is recorded at `path`.
pub(crate) fn parse_format(cx: &mut Ctx, path: &FieldPath, text: &str) -> Option<Vec<FormatPiece>> {
    let bytes = text.as_bytes();
    let mut pieces = Vec::new();
    let mut literal = String::new();
    let mut ok = true;
    let mut pos = 0;
    while pos < text.len() {
        let Some(offset) = text[pos..].find('%') else {
            literal.push_str(&text[pos..]);
            break;
        };
        literal.push_str(&text[pos..pos + offset]);
        pos += offset;
        if bytes.get(pos + 1) == Some(&b'%') {
            literal.push('%');
            pos += 2;
            continue;
        }
        let Some((name, args, max_length, end)) = command_at(text, pos) else {
            cx.invalid(
                path,
                // Escaped: a format's newline would split the message.
                format!(
                    "Incorrect configuration: {}. Couldn't find valid command at position {pos}",
                    text.escape_debug()
                ),
            );
            return None;
        };
        pos = end;
        match operator(name, args) {
            Ok(operator) => {
                if !literal.is_empty() {
                    pieces.push(FormatPiece::Literal(std::mem::take(&mut literal)));
                }
                pieces.push(FormatPiece::Command {
                    operator,
                    max_length,
                });
            }
            Err(OperatorError::Unknown) => {
                cx.invalid(path, format!("Not supported field in StreamInfo: {name}"));
                ok = false;
            }
            Err(OperatorError::Unsupported) => {
                cx.unsupported(
                    path,
                    format!("command operator %{name}% is not implemented by vigil's access log"),
                );
                ok = false;
            }
            Err(OperatorError::Invalid(message)) => {
                cx.invalid(path, message);
                ok = false;
            }
        }
    }
    if !literal.is_empty() {
        pieces.push(FormatPiece::Literal(literal));
    }
    ok.then_some(pieces)
}

/// The command starting with the `%` at `start`: its name, arguments, max length and the
/// position after its closing `%`.
fn command_at(text: &str, start: usize) -> Option<(&str, Option<&str>, Option<usize>, usize)> {
    let rest = &text[start + 1..];
    let name_len = rest
        .bytes()
        .take_while(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || *b == b'_')
        .count();
    if name_len == 0 {
        return None;
    }
    let name = &rest[..name_len];
    let mut at = name_len;
    let mut args = None;
    if rest[at..].starts_with('(') {
        let close = rest[at..].find(')')?;
        args = Some(&rest[at + 1..at + close]);
        at += close + 1;
    }
    let mut max_length = None;
    if rest[at..].starts_with(':') {
        let digits = rest[at + 1..]
            .bytes()
            .take_while(u8::is_ascii_digit)
            .count();
        max_length = Some(rest[at + 1..at + 1 + digits].parse().ok()?);
        at += 1 + digits;
    }
    rest[at..]
        .starts_with('%')
        .then_some((name, args, max_length, start + 1 + at + 1))
}

enum OperatorError {
    Unknown,
    Unsupported,
    Invalid(String),
}

fn operator(name: &str, args: Option<&str>) -> Result<FormatOperator, OperatorError> {
    use FormatOperator as F;
    let header = |args: Option<&str>| -> Result<(String, Option<String>), OperatorError> {
        let args = args
            .filter(|a| !a.is_empty())
            .ok_or_else(|| OperatorError::Invalid(format!("{name} requires parameters")))?;
        let mut parts = args.split('?');
        let main = parts.next().unwrap_or_default().to_ascii_lowercase();
        let alternative = parts.next().map(str::to_ascii_lowercase);
        if parts.next().is_some() {
            return Err(OperatorError::Invalid(format!(
                "More than 1 alternative header specified in token: {args}"
            )));
        }
        Ok((main, alternative))
    };
    Ok(match name {
        "START_TIME" => F::StartTime(args.filter(|a| !a.is_empty()).map(str::to_string)),
        "REQ" | "REQUEST_HEADER" => {
            let (name, alternative) = header(args)?;
            F::RequestHeader { name, alternative }
        }
        "RESP" | "RESPONSE_HEADER" => {
            let (name, alternative) = header(args)?;
            F::ResponseHeader { name, alternative }
        }
        "TRAILER" | "RESPONSE_TRAILER" => {
            header(args)?;
            F::ResponseTrailer
        }
        "PROTOCOL" => F::Protocol,
        "RESPONSE_CODE" => F::ResponseCode,
        "RESPONSE_CODE_DETAILS" => F::ResponseCodeDetails,
        "RESPONSE_FLAGS" => F::ResponseFlags,
        "RESPONSE_FLAGS_LONG" => F::ResponseFlagsLong,
        "BYTES_RECEIVED" => F::BytesReceived,
        "BYTES_SENT" => F::BytesSent,
        "DURATION" => F::Duration,
        "REQUEST_DURATION" => F::RequestDuration,
        "RESPONSE_DURATION" => F::ResponseDuration,
        "UPSTREAM_HOST" => F::UpstreamHost,
        "UPSTREAM_CLUSTER" => F::UpstreamCluster,
        "UPSTREAM_TRANSPORT_FAILURE_REASON" => F::UpstreamTransportFailureReason,
        "UPSTREAM_REQUEST_ATTEMPT_COUNT" => F::UpstreamRequestAttemptCount,
        "DOWNSTREAM_REMOTE_ADDRESS" => F::DownstreamRemoteAddress,
        "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT" => F::DownstreamRemoteAddressWithoutPort,
        "DOWNSTREAM_LOCAL_ADDRESS" => F::DownstreamLocalAddress,
        "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT" => F::DownstreamLocalAddressWithoutPort,
        "ROUTE_NAME" => F::RouteName,
        "HOSTNAME" => F::Hostname,
        other if UNSUPPORTED_OPERATORS.contains(&other) => return Err(OperatorError::Unsupported),
        _ => return Err(OperatorError::Unknown),
    })
}
