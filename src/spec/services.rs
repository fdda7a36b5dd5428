//! What the services' own documentation requires, checked on the validated spec (each rule cites its page).

use super::model::{EnvValue, Spec};
use crate::diag::Diagnostic;

/// Pi-hole v6 in Docker: "If using Docker's default `bridge` network setting the dns listening mode should be
/// set to 'ALL'" (docs.pi-hole.net, Docker page). FTL's default (`LOCAL`) answers only clients on the
/// container's own subnet, and behind a published port every LAN client arrives from outside it: the
/// resolver would run and answer nobody.
fn pihole_listening_mode(spec: &Spec, d: &mut Vec<Diagnostic>) {
    for st in spec.stacks.values() {
        for svc in st.services.values() {
            if svc.image.repository.rsplit('/').next() != Some("pihole")
                || !svc.ports.iter().any(|p| p.host == 53)
            {
                continue;
            }
            let mode = match svc.environment.get("FTLCONF_dns_listeningMode") {
                Some(EnvValue::Literal(v)) => Some(v.as_str()),
                _ => None,
            };
            // A value with control characters is already SPEC026 (one mistake, one error).
            if mode.is_some_and(|m| m.chars().any(char::is_control)) {
                continue;
            }
            if mode.map(|m| m.eq_ignore_ascii_case("all")) != Some(true) {
                d.push(
                    Diagnostic::error(
                        "SPEC032",
                        format!(
                            "stacks.{}.services.{}.environment.FTLCONF_dns_listeningMode",
                            st.name, svc.name
                        ),
                        format!(
                            "Pi-hole publishes port 53 from a Docker bridge network but its DNS listening mode is {}: FTL then answers only the container's own subnet, never the LAN clients the port is published for",
                            mode.map(|m| format!("`{}`", super::validate::elide(m))).unwrap_or_else(|| "the default (LOCAL)".into())
                        ),
                    )
                    .at(st.loc)
                    .help("set FTLCONF_dns_listeningMode = \"ALL\" in the service's environment (docs.pi-hole.net, Docker page); the host firewall still admits only the networks the spec publishes port 53 to"),
                );
            }
        }
    }
}

/// Every service rule over the validated spec.
pub fn diagnostics(spec: &Spec) -> Vec<Diagnostic> {
    let mut d = Vec::new();
    pihole_listening_mode(spec, &mut d);
    d
}
