//! A host whose verify (or deploy) task does not finish is a failed host: never dropped from the results,
//! never an exit 0. Stub transports stand in for the SSH session (no root, no network).

use labforge::spec::model::Spec;
use labforge::transport::{BoxFut, Output, Transport, TransportError};
use labforge::verify::{self, Status};
use std::sync::Arc;

fn spec() -> Spec {
    labforge::spec::load_dir(&std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("hosts"))
        .unwrap()
        .spec
        .expect("example lab is valid")
}

fn ssh_hosts(spec: &Spec) -> Vec<String> {
    spec.hosts
        .values()
        .filter(|h| h.os.has_ssh())
        .map(|h| h.name.clone())
        .take(2)
        .collect()
}

/// What goes wrong when a command runs.
#[derive(Clone, Copy)]
enum Mode {
    Panic,
    Error,
    /// Prints something that is not the probe protocol (a shell that ignores stdin).
    Garbage,
}

struct Stub {
    name: String,
    mode: Mode,
}

impl Transport for Stub {
    fn host(&self) -> &str {
        &self.name
    }
    fn needs_sudo(&self) -> bool {
        true
    }
    fn exec<'a>(
        &'a self,
        step: &'a str,
        cmd: &'a str,
        _stdin: Option<&'a [u8]>,
    ) -> BoxFut<'a, Result<Output, TransportError>> {
        Box::pin(async move {
            match self.mode {
                Mode::Panic => panic!("stub transport: a bug while running `{cmd}`"),
                Mode::Error => Err(self.error(step, cmd, "connection reset by stub".into())),
                Mode::Garbage => Ok(Output {
                    stdout:
                        b"@@LF-BEGIN sshd-mgmt\npasswordauthentication no\n@@LF-END sshd-mgmt 0\n"
                            .to_vec(),
                    stderr: Vec::new(),
                    status: Some(0),
                }),
            }
        })
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn a_panicking_verify_task_is_a_failed_host_not_a_dropped_one() {
    let spec = Arc::new(spec());
    let names = ssh_hosts(&spec);
    assert_eq!(names.len(), 2);
    let panicking = names[0].clone();
    let reports = rt().block_on(verify::run_hosts(&names, 2, |n: String| {
        let spec = spec.clone();
        let mode = if n == panicking {
            Mode::Panic
        } else {
            Mode::Error
        };
        async move {
            let t = Stub {
                name: n.clone(),
                mode,
            };
            verify::verify_over(&spec, &spec.hosts[&n], &t).await
        }
    }));
    assert_eq!(
        reports.len(),
        2,
        "one report per host, even for the panicking one"
    );
    assert_eq!(reports[0].host, names[0]);
    let r = &reports[0];
    assert_eq!(r.results.len(), 1);
    assert_eq!(r.results[0].id, "verify.completed");
    assert_eq!(r.results[0].status, Status::Error);
    assert!(
        r.results[0].detail.contains("panicked: stub transport"),
        "{}",
        r.results[0].detail
    );
    // A transport error is an error on every remote check, never a pass.
    let r = &reports[1];
    assert!(r.count(Status::Error) > 10);
    assert!(r
        .results
        .iter()
        .filter(|c| c.id.starts_with("sshd.") || c.id.starts_with("listen."))
        .all(|c| c.status == Status::Error));
    assert_ne!(verify::exit_code(&reports), 0);
    assert_ne!(
        verify::exit_code(&reports[..1]),
        0,
        "a one-host run with a panic is not exit 0"
    );
}

#[test]
fn output_that_is_not_the_probe_protocol_is_refused_not_judged() {
    let spec = spec();
    let n = &ssh_hosts(&spec)[0];
    let t = Stub {
        name: n.clone(),
        mode: Mode::Garbage,
    };
    let r = rt().block_on(verify::verify_over(&spec, &spec.hosts[n], &t));
    let authentic = r
        .results
        .iter()
        .find(|c| c.id == "probe.output-authentic")
        .unwrap();
    assert_eq!(authentic.status, Status::Fail, "{}", authentic.detail);
    assert!(r
        .results
        .iter()
        .filter(|c| c.id.starts_with("sshd."))
        .all(|c| c.status == Status::Error));
    assert_ne!(verify::exit_code(std::slice::from_ref(&r)), 0);
}

/// Connects to [`Stub`]s that panic on their first command.
struct PanicConnector;

impl labforge::deploy::Connector for PanicConnector {
    fn connect<'a>(&'a self, host: &'a str) -> BoxFut<'a, anyhow::Result<Arc<dyn Transport>>> {
        Box::pin(async move {
            Ok(Arc::new(Stub {
                name: host.to_string(),
                mode: Mode::Panic,
            }) as Arc<dyn Transport>)
        })
    }
    fn verify<'a>(&'a self, _spec: &'a Spec, host: &'a str) -> BoxFut<'a, verify::HostReport> {
        Box::pin(async move { panic!("stub verify of {host}") })
    }
}

#[test]
fn a_panicking_deploy_task_is_a_failed_host_with_its_name() {
    let spec = Arc::new(spec());
    let names = ssh_hosts(&spec);
    let sel: Vec<&labforge::spec::model::Host> = names.iter().map(|n| &spec.hosts[n]).collect();
    let plan = labforge::plan::plan(&spec, &sel);
    let events = Arc::new(std::sync::Mutex::new(Vec::new()));
    let ev = events.clone();
    let ctx = Arc::new(labforge::deploy::Ctx {
        spec: spec.clone(),
        root: std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")),
        connector: Arc::new(PanicConnector),
        sink: Arc::new(move |e: &labforge::deploy::Event| {
            ev.lock().unwrap().push(serde_json::to_value(e).unwrap())
        }),
        confirm_timeout: std::time::Duration::from_secs(5),
        secrets: Arc::new(|n: &str| anyhow::bail!("no secret {n} in this test")),
        dry_run: true,
    });
    let plans: Vec<_> = plan
        .hosts
        .into_iter()
        .filter(|h| !h.deploy.is_empty())
        .collect();
    assert_eq!(plans.len(), 2);
    let summary = rt().block_on(labforge::deploy::deploy(ctx, plans, 2));
    assert_eq!(summary.len(), 2);
    for (s, n) in summary.iter().zip(&names) {
        assert_eq!(&s.host, n);
        assert_eq!(
            s.status,
            labforge::deploy::StepStatus::Failed,
            "{}",
            s.detail
        );
        assert!(s.detail.contains("did not finish"), "{}", s.detail);
    }
    let done = events
        .lock()
        .unwrap()
        .iter()
        .filter(|e| e["event"] == "host-done" && e["status"] == "failed")
        .count();
    assert_eq!(done, 2, "each failed host is reported as done/failed");
}
