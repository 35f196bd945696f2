//! Exposed names: what one server offers is listed under
//! `server.name` (`billing.read_renewal_status`), resources under
//! `server.uri`. Server names cannot contain the separator, so the first
//! one splits an exposed name, whatever the server's own names contain.

const SEPARATOR: char = '.';

pub fn expose(server: &str, name: &str) -> String {
    let mut s = String::with_capacity(server.len() + 1 + name.len());
    s.push_str(server);
    s.push(SEPARATOR);
    s.push_str(name);
    s
}

/// `(server, its own name)`; `None` when there is no server part.
pub fn split_exposed(exposed: &str) -> Option<(&str, &str)> {
    let (server, name) = exposed.split_once(SEPARATOR)?;
    (!server.is_empty() && !name.is_empty()).then_some((server, name))
}
