//! `config.core.v3.Address` and `SocketAddress`: the addresses listeners bind, endpoints name and
//! DNS resolvers are given, typed and read as Envoy reads them (a port required, at most 65535).

use super::schema::{ADDRESS, PIPE, SOCKET_ADDRESS, SOCKET_PROTOCOL};
use crate::protojson::{Ctx, FieldPath, Obj};
use serde_json::Value;

/// `config.core.v3.Address`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    Socket(SocketAddress),
    /// `pipe {path, mode}`: a Unix domain socket.
    Pipe {
        path: String,
        mode: u32,
    },
    /// `envoy_internal_address`, kept as written.
    Internal(Value),
}

impl Address {
    /// The socket address, when this is one.
    pub fn socket(&self) -> Option<&SocketAddress> {
        match self {
            Address::Socket(s) => Some(s),
            _ => None,
        }
    }
}

/// `config.core.v3.SocketAddress` with a numeric port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketAddress {
    /// An IP literal, or a DNS name for DNS clusters.
    pub address: String,
    pub port_value: u16,
    /// `protocol` (default TCP).
    pub protocol: SocketProtocol,
    /// `ipv4_compat` (listeners on `::` that also accept IPv4).
    pub ipv4_compat: bool,
}

/// `SocketAddress.protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SocketProtocol {
    #[default]
    Tcp,
    Udp,
}

/// `config.core.v3.Address`.
pub(super) fn address(cx: &mut Ctx, path: &FieldPath, value: &Value) -> Option<Address> {
    let mut o = Obj::new(cx, path.clone(), value, &ADDRESS)?;
    let result = if let Some((p, v)) = o.take("socket_address") {
        socket_address(cx, &p, v).map(Address::Socket)
    } else if let Some(mut pipe) = o.message(cx, "pipe", &PIPE) {
        let path_value = pipe
            .required_string(cx, "path", "required: must not be empty")
            .unwrap_or_default();
        let mode = pipe.u32(cx, "mode").unwrap_or(0);
        if mode > 0o777 {
            cx.invalid(
                &pipe.path.field("mode"),
                format!("must be at most 511, found {mode}"),
            );
        }
        pipe.finish(cx);
        Some(Address::Pipe {
            path: path_value,
            mode,
        })
    } else if let Some(internal) = o.raw_message(cx, "envoy_internal_address") {
        Some(Address::Internal(internal))
    } else {
        cx.invalid(
            path,
            "required: one of socket_address, pipe or envoy_internal_address",
        );
        None
    };
    o.finish(cx);
    result
}

/// `config.core.v3.SocketAddress`; a port is required (Envoy's `port_specifier` oneof).
pub(super) fn socket_address(
    cx: &mut Ctx,
    path: &FieldPath,
    value: &Value,
) -> Option<SocketAddress> {
    let mut o = Obj::new(cx, path.clone(), value, &SOCKET_ADDRESS)?;
    let protocol = match o.enumeration(cx, "protocol", &SOCKET_PROTOCOL) {
        Some(1) => SocketProtocol::Udp,
        _ => SocketProtocol::Tcp,
    };
    let address = o
        .required_string(cx, "address", "required: the address must not be empty")
        .unwrap_or_default();
    let port_path = path.field("port_value");
    let port = match o.u32(cx, "port_value") {
        Some(p) => match u16::try_from(p) {
            Ok(p) => Some(p),
            Err(_) => {
                cx.invalid(
                    &port_path,
                    format!("a port must be at most 65535, found {p}"),
                );
                None
            }
        },
        None => {
            if !o.has("named_port") && !cx.errors.iter().any(|e| e.path == port_path) {
                cx.invalid(&port_path, "required: a socket_address needs a port_value");
            }
            None
        }
    };
    let ipv4_compat = o.bool(cx, "ipv4_compat").unwrap_or(false);
    o.finish(cx);
    if address.is_empty() {
        return None;
    }
    Some(SocketAddress {
        address,
        port_value: port?,
        protocol,
        ipv4_compat,
    })
}
