# Hand-written (not rendered): the NixOS VM test behind `checks.x86_64-linux.vm-verify-<host>` in flake.nix.
#
# `target` boots the host's rendered, hardened module tree (nixos/hosts/<host>) unchanged except for two
# test-only overrides, and `verifier` runs `labforge verify` against it, as an operator would:
#   * NICs: a VM has no NIC with the spec's MAC, so the test framework creates them under the spec's names
#     (virtualisation.interfaces); the rendered addresses, VLAN-free links and firewall apply as written.
#   * admin key: the operator's private key is not in the test, so sshd also reads a root-owned file the
#     test writes at run time with a key generated on the verifier. The host key is the one sshd generates
#     on first boot; the verifier pins it exactly as labforge pins a provisioned key (secrets/ssh-host-keys).
# Nothing else is overridden: root login, passwords, algorithms, listen address and firewall are the render's.
{
  self,
  inputs,
  labforge,
  host,
  admin,
  sshPort,
  nics,
}:
let
  mgmt = builtins.head (builtins.filter (n: n.ssh) nics);
  others = builtins.filter (n: !n.ssh) nics;
  knownHost = if sshPort == 22 then mgmt.address else "[${mgmt.address}]:${toString sshPort}";
in
{
  name = "labforge-verify-${host}";

  node.specialArgs = { inherit inputs; };

  nodes.target =
    { lib, ... }:
    {
      imports = [ (self + "/nixos/hosts/${host}") ];
      virtualisation.interfaces = builtins.listToAttrs (
        map (n: {
          inherit (n) name;
          value = {
            inherit (n) vlan;
            assignIP = false;
          };
        }) nics
      );
      services.openssh.authorizedKeysFiles = [ "/run/labforge-test/authorized_keys/%u" ];
    };

  nodes.verifier =
    { pkgs, ... }:
    {
      virtualisation.interfaces = builtins.listToAttrs (
        map (n: {
          name = "eth${toString n.vlan}";
          value = {
            inherit (n) vlan;
            assignIP = false;
          };
        }) nics
      );
      networking.interfaces = builtins.listToAttrs (
        map (n: {
          name = "eth${toString n.vlan}";
          value.ipv4.addresses = [
            {
              address = n.peer;
              inherit (n) prefixLength;
            }
          ];
        }) nics
      );
      networking.firewall.enable = false;
      environment.systemPackages = [
        labforge
        pkgs.openssh
        pkgs.netcat-openbsd
      ];
    };

  testScript = ''
    start_all()
    target.wait_for_unit("sshd.service")
    target.wait_until_succeeds("ip -4 -o addr show dev ${mgmt.name} | grep -q ' ${mgmt.address}/'")
    verifier.wait_for_unit("network.target")

    # The operator's key (generated here) and the target's host key, pinned like labforge pins it.
    verifier.succeed("install -d -m 0700 /root/.ssh && ssh-keygen -q -t ed25519 -N ''' -f /root/.ssh/id_ed25519")
    pub = verifier.succeed("cat /root/.ssh/id_ed25519.pub").strip()
    target.succeed("install -d -m 0755 /run/labforge-test/authorized_keys")
    target.succeed(f"echo '{pub}' > /run/labforge-test/authorized_keys/${admin}")
    hostkey = target.succeed("cut -d' ' -f1,2 /etc/ssh/ssh_host_ed25519_key.pub").strip()
    verifier.succeed(f"echo '${knownHost} {hostkey}' > /root/.ssh/known_hosts")
    verifier.succeed("cp -r ${self} /tmp/lab && chmod -R u+w /tmp/lab")
    verifier.succeed(f"install -d /tmp/lab/secrets/ssh-host-keys && echo '{hostkey}' > /tmp/lab/secrets/ssh-host-keys/${host}.pub")

    ssh = "ssh -p ${toString sshPort} -o BatchMode=yes -o StrictHostKeyChecking=yes -o ConnectTimeout=5"

    with subtest("hardening as OpenSSH sees it"):
        verifier.wait_until_succeeds(f"{ssh} ${admin}@${mgmt.address} true", timeout=60)
        verifier.succeed(f"{ssh} ${admin}@${mgmt.address} sudo -n true")
        verifier.fail(f"{ssh} root@${mgmt.address} true")
        verifier.fail(f"{ssh} -o PubkeyAuthentication=no -o PreferredAuthentications=password,keyboard-interactive ${admin}@${mgmt.address} true")
        verifier.fail(f"{ssh} -o Ciphers=aes128-ctr ${admin}@${mgmt.address} true")
        verifier.fail(f"{ssh} -o HostKeyAlgorithms=ecdsa-sha2-nistp256 ${admin}@${mgmt.address} true")
        target.succeed("sshd -T | grep -qx 'permitrootlogin no'")
        target.succeed("sshd -T | grep -qx 'passwordauthentication no'")
        target.succeed("sshd -T | grep -qx 'listenaddress ${mgmt.address}:${toString sshPort}'")
    ${builtins.concatStringsSep "\n" (
      map (n: ''
        with subtest("no SSH on ${n.name} (${n.address})"):
            verifier.fail("nc -z -w 3 ${n.address} ${toString sshPort}")
      '') others
    )}
    with subtest("labforge verify"):
        verifier.succeed("cd /tmp/lab && labforge --spec hosts verify --identity /root/.ssh/id_ed25519 ${host}")
  '';
}
