//! `rebuild`'s refusal rule on the example lab and on variations of it (library level): a rebuild may go
//! ahead only for a disposable host whose persistent paths are all on remote mounts or disposable disks.
mod common;

use labforge::rebuild::would_lose;

fn spec_with(extra: &[(&str, &str)]) -> labforge::spec::Spec {
    let t = common::example_lab();
    for (file, text) in extra {
        std::fs::write(t.path().join("hosts").join(file), text).unwrap();
    }
    let l = labforge::spec::load_dir(&t.path().join("hosts")).unwrap();
    assert!(!l.diagnostics.has_errors(), "{:?}", l.diagnostics.errors);
    l.spec.unwrap()
}

#[test]
fn example_lab_disposable_hosts_lose_nothing_and_the_others_are_refused() {
    let s = spec_with(&[]);
    // prometheus: disposable, persistent paths on Atlas's NFS exports; vulcan, ceres: nothing persistent.
    assert!(would_lose(&s, &s.hosts["prometheus"]).is_empty());
    assert!(would_lose(&s, &s.hosts["vulcan"]).is_empty());
    assert!(would_lose(&s, &s.hosts["ceres"]).is_empty());
    let hermes = would_lose(&s, &s.hosts["hermes"]);
    assert_eq!(hermes.len(), 1, "{hermes:?}");
    assert!(hermes[0].contains("not disposable"));
}

#[test]
fn a_persistent_path_on_the_os_disk_or_a_kept_disk_is_named() {
    let mut v = std::fs::read_to_string(common::repo().join("hosts/vulcan.toml")).unwrap();
    // Local data (the validator refuses that on a disposable host, S000-DISPOSABLE, so this vulcan is kept):
    // one path on the OS disk, one on a scratch disk marked disposable, one on a kept disk.
    v = v.replace(
        "[hosts.vulcan.interfaces.ens3]",
        "disposable = false\npersistent_paths = [\"/var/lib/jobs\", \"/scratch/cache\", \"/data/results\"]\n\n[hosts.vulcan.interfaces.ens3]",
    );
    v.push_str(
        "\n[hosts.vulcan.disks.scratch]\ndevice = \"/dev/disk/by-id/virtio-vulcan-scratch\"\npurpose = \"scratch\"\ndisposable = true\nmountpoint = \"/scratch\"\n\n[hosts.vulcan.disks.results]\ndevice = \"/dev/disk/by-id/virtio-vulcan-results\"\npurpose = \"data\"\nmountpoint = \"/data\"\n",
    );
    let s = spec_with(&[("vulcan.toml", &v)]);
    let lost = would_lose(&s, &s.hosts["vulcan"]);
    assert_eq!(lost.len(), 3, "{lost:?}");
    assert!(
        lost[0].contains("host `vulcan` is not disposable"),
        "{lost:?}"
    );
    assert!(
        lost[1].contains("/var/lib/jobs lives on the OS disk"),
        "{lost:?}"
    );
    assert!(
        lost[2].contains("/data/results is on disk `results`"),
        "{lost:?}"
    );
}
