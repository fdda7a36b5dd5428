# Option declarations for the module-system oracle (tests/nixos_modsys.nix, run by tests/nixos_modsys.rs,
# tests/nixos_eval.rs and tests/nixos_image.rs): every option labforge's NixOS renders define — host modules
# (templates/nixos/*.tera), the standard service template (service.nix), flake.nix's inline module — and
# those the image/board module copies (tests/nixopts/image-modules.nix) define. Each declaration names the
# nixpkgs file (under nixos/modules/ of NixOS/nixpkgs nixos-26.05, see tests/nixos-options.toml [meta] for
# the file versions read) or nixos-hardware file it is copied from, with its type as declared there, written
# with the miniature lib.types of tests/nixopts/types.nix. Not copied: descriptions, defaults (except where
# a default is what a rendered module reads), merge functions and implementations.
#
# A submodule lists only the sub-options labforge (or a copied image module) defines plus a few neighbours;
# nixpkgs declares more. An undeclared one is reported as "does not exist": a real option missing here then
# fails loudly and is added here (with its source), never silently accepted.
#
# Kept in step with tests/nixos-options.toml (the rnix walk of tests/nixos_options.rs):
# tests/nixos_modsys.rs checks that every option path declared here is in the manifest and back.
{ types, mkOption }:
let
  t = types;
  opt = src: type: mkOption { inherit type src; };
  optD = src: type: default: mkOption { inherit type src default; };
  bool = src: opt src t.bool;
  # nixos/lib/systemd-lib.nix boolValues
  boolValues = [ true false "yes" "no" ];
  netd = "system/boot/networkd.nix";
  sshd = "services/networking/ssh/sshd.nix";
  # system/boot/kernel.nix (the version with mkRemovedOptionModule [ "boot" "vesa" ]): a list of module
  # names is coerced into an attrset of bools (genAttrs enabledList (_: true)).
  attrNamesToTrue = t.coercedTo (t.listOf t.str)
    (l: builtins.listToAttrs (map (n: { name = n; value = true; }) l)) (t.attrsOf t.bool);
  units = "lib/systemd-unit-options.nix";
in
{
  # ---- default.nix
  time.timeZone = opt "config/locale.nix" (t.nullOr t.str);
  i18n.defaultLocale = opt "config/i18n.nix" t.str;
  system.stateVersion = opt "misc/version.nix" t.str;
  services.xserver.enable = bool "services/x11/xserver.nix";
  documentation.nixos.enable = bool "misc/documentation.nix";
  environment.systemPackages = opt "config/system-path.nix" (t.listOf t.package);
  # config/nix.nix: settings = submodule { freeformType = semanticConfType; options = { … }; }
  nix.settings = opt "config/nix.nix" (t.submodule {
    freeformType =
      let atom = t.nullOr (t.oneOf [ t.bool t.int t.float t.str t.path t.package ]); in
      t.either atom (t.listOf atom);
    options = {
      allowed-users = opt "config/nix.nix" (t.listOf t.str);
      trusted-users = opt "config/nix.nix" (t.listOf t.str);
      experimental-features = opt "config/nix.nix (semanticConfType)" (t.listOf t.str);
    };
  });

  # ---- hardware.nix
  sdImage = {
    compressImage = bool "installer/sd-card/sd-image.nix";
    # declared without a type (unspecified)
    populateFirmwareCommands = opt "installer/sd-card/sd-image.nix" t.unspecified;
  };
  hardware = {
    enableAllHardware = bool "profiles/all-hardware.nix";
    enableRedistributableFirmware = bool "hardware/all-firmware.nix";
    cpu.intel.updateMicrocode = bool "hardware/cpu/intel-microcode.nix";
    cpu.amd.updateMicrocode = bool "hardware/cpu/amd-microcode.nix";
    ksm.enable = bool "hardware/ksm.nix (mkEnableOption)";
    deviceTree.filter = opt "hardware/device-tree.nix" (t.nullOr t.str);
    # nixos-hardware raspberry-pi/common/firmware.nix (uboot.enable: mkEnableOption) and config-txt.nix.
    raspberry-pi.firmware.uboot.enable = bool "nixos-hardware raspberry-pi/common/firmware.nix";
    # config-txt.nix: attrsOf molecule, molecule = oneOf [ atom (listOf atom) (attrsOf molecule) ],
    # atom = nullOr (oneOf [ str int bool ]) (recursive: checked by one function here).
    raspberry-pi.configtxt.settings =
      let
        atom = v: v == null || builtins.isString v || builtins.isInt v || builtins.isBool v;
        molecule = v: atom v || (builtins.isList v && builtins.all atom v)
          || (builtins.isAttrs v && builtins.all (n: molecule v.${n}) (builtins.attrNames v));
      in
      opt "nixos-hardware raspberry-pi/common/config-txt.nix"
        (t.attrsOf (t.mkOptionType { name = "config.txt setting type"; check = molecule; }));
  };
  boot = {
    loader.grub.enable = bool "system/boot/loader/grub/grub.nix";
    loader.generic-extlinux-compatible.enable = bool "system/boot/loader/generic-extlinux-compatible/default.nix";
    loader.generic-extlinux-compatible.useGenerationDeviceTree = bool "system/boot/loader/generic-extlinux-compatible/default.nix";
    loader.systemd-boot.enable = bool "system/boot/loader/systemd-boot/systemd-boot.nix";
    loader.systemd-boot.editor = bool "system/boot/loader/systemd-boot/systemd-boot.nix";
    loader.efi.canTouchEfiVariables = bool "system/boot/loader/efi.nix";
    growPartition = bool "system/boot/grow-partition.nix";
    initrd.availableKernelModules = opt "system/boot/kernel.nix (attrNamesToTrue)" attrNamesToTrue;
    initrd.kernelModules = opt "system/boot/kernel.nix (attrNamesToTrue)" attrNamesToTrue;
    kernelModules = opt "system/boot/kernel.nix (attrNamesToTrue)" attrNamesToTrue;
    kernelPackages = opt "system/boot/kernel.nix" t.raw;
    # tasks/filesystems.nix: coercedTo (listOf str) (enabled: listToAttrs (map (fs: nameValuePair fs true) enabled)) (attrsOf bool)
    supportedFilesystems = opt "tasks/filesystems.nix" (t.coercedTo (t.listOf t.str)
      (l: builtins.listToAttrs (map (n: { name = n; value = true; }) l)) (t.attrsOf t.bool));
  };
  services.qemuGuest.enable = bool "virtualisation/qemu-guest-agent.nix";
  # tasks/filesystems.nix: attrsOf (submodule [ coreFileSystemOpts fileSystemOpts ]); the mount point
  # (default: the name) is nonEmptyWithoutTrailingSlash.
  fileSystems = opt "tasks/filesystems.nix" (t.attrsOfNamed
    { name = "a mount point without a trailing slash"; check = n: builtins.match "/|.*[^/]" n != null; }
    (t.submodule {
      options = {
        mountPoint = opt "tasks/filesystems.nix" (t.strMatching "/|.*[^/]");
        device = opt "tasks/filesystems.nix" (t.nullOr t.nonEmptyStr);
        label = opt "tasks/filesystems.nix" (t.nullOr t.str);
        fsType = opt "tasks/filesystems.nix" t.nonEmptyStr;
        options = opt "tasks/filesystems.nix" (t.nonEmptyListOf t.nonEmptyStr);
        depends = opt "tasks/filesystems.nix" (t.listOf t.nonEmptyStr);
        autoFormat = bool "tasks/filesystems.nix";
        autoResize = bool "tasks/filesystems.nix";
        noCheck = bool "tasks/filesystems.nix";
        neededForBoot = bool "system/boot/stage-1.nix";
      };
    }));

  # ---- networking.nix
  networking = {
    hostName = opt "tasks/network-interfaces.nix" (t.strMatching "^$|^[[:alnum:]]([[:alnum:]_-]{0,61}[[:alnum:]])?$");
    domain = opt "tasks/network-interfaces.nix" (t.nullOr t.str);
    useDHCP = bool "tasks/network-interfaces.nix";
    useNetworkd = bool "tasks/network-interfaces.nix";
    nameservers = opt "tasks/network-interfaces.nix" (t.listOf t.str);

    # ---- firewall.nix
    nftables = {
      enable = bool "services/networking/nftables.nix";
      flushRuleset = bool "services/networking/nftables.nix (mkEnableOption)";
      tables = opt "services/networking/nftables.nix" (t.attrsOf (t.submodule {
        options = {
          enable = bool "services/networking/nftables.nix";
          name = opt "services/networking/nftables.nix" t.str;
          family = opt "services/networking/nftables.nix" (t.enum [ "ip" "ip6" "inet" "arp" "bridge" "netdev" ]);
          content = opt "services/networking/nftables.nix" t.lines;
        };
      }));
    };
    firewall =
      let
        fw = "services/networking/firewall.nix";
        ports = {
          allowedTCPPorts = opt fw (t.listOf t.port);
          allowedUDPPorts = opt fw (t.listOf t.port);
          allowedTCPPortRanges = opt fw (t.listOf (t.attrsOf t.port));
          allowedUDPPortRanges = opt fw (t.listOf (t.attrsOf t.port));
        };
      in
      ports // {
        enable = bool fw;
        rejectPackets = bool fw;
        allowPing = bool fw;
        logRefusedConnections = bool fw;
        interfaces = opt fw (t.attrsOf (t.submodule { options = ports; }));
        extraInputRules = opt "services/networking/firewall-nftables.nix" t.lines;
      };
  };
  systemd.network =
    let
      # [Match] is `attrsOf unitOption` (no field check in nixpkgs).
      matchConfig = opt netd (t.attrsOf t.unitOption);
      commonNetworkOptions = {
        enable = bool netd;
        inherit matchConfig;
        extraConfig = opt netd t.lines;
      };
      # Each section's allowed fields (assertOnlyFields) and value checks (assertValueOneOf, assertRange,
      # assertInt, assertHasField) as check.{link,netdev,network}.section* declare them in networkd.nix (the
      # nixfmt-formatted version with the IPv4Forwarding/IPv6Forwarding [Network] checks, see
      # tests/nixos-options.toml [meta]). Checks of fields labforge never sets (byte formats, MAC syntax)
      # are left out: those fields take any unit option here.
      only = names: checks: builtins.listToAttrs (map (n: { name = n; value = checks.${n} or null; }) names);
      oneOf = l: t.enum l;
      int = t.int;
      range = t.ints.between;
      linkSectionLink = t.unitSection "Link" (only [
        "Description" "Property" "ImportProperty" "UnsetProperty" "Alias" "MACAddressPolicy" "MACAddress"
        "NamePolicy" "Name" "AlternativeNamesPolicy" "AlternativeName" "TransmitQueues" "ReceiveQueues"
        "TransmitQueueLength" "MTUBytes" "BitsPerSecond" "Duplex" "AutoNegotiation" "WakeOnLan"
        "WakeOnLanPassword" "Port" "Advertise" "ReceiveChecksumOffload" "TransmitChecksumOffload"
        "TCPSegmentationOffload" "TCP6SegmentationOffload" "GenericSegmentationOffload"
        "PartialGenericSegmentationOffload" "GenericReceiveOffload" "GenericReceiveOffloadHardware"
        "LargeReceiveOffload" "ReceivePacketSteeringCPUMask" "ReceiveVLANCTAGHardwareAcceleration"
        "TransmitVLANCTAGHardwareAcceleration" "ReceiveVLANCTAGFilter" "TransmitVLANSTAGHardwareAcceleration"
        "NTupleFilter" "ReceiveFCS" "ReceiveAll" "RxChannels" "TxChannels" "OtherChannels" "CombinedChannels"
        "RxBufferSize" "RxMiniBufferSize" "RxJumboBufferSize" "TxBufferSize" "RxFlowControl" "TxFlowControl"
        "AutoNegotiationFlowControl" "GenericSegmentOffloadMaxBytes" "GenericSegmentOffloadMaxSegments"
        "UseAdaptiveRxCoalesce" "UseAdaptiveTxCoalesce" "RxCoalesceSec" "RxCoalesceIrqSec" "RxCoalesceLowSec"
        "RxCoalesceHighSec" "TxCoalesceSec" "TxCoalesceIrqSec" "TxCoalesceLowSec" "TxCoalesceHighSec"
        "RxMaxCoalescedFrames" "RxMaxCoalescedIrqFrames" "RxMaxCoalescedLowFrames" "RxMaxCoalescedHighFrames"
        "TxMaxCoalescedFrames" "TxMaxCoalescedIrqFrames" "TxMaxCoalescedLowFrames" "TxMaxCoalescedHighFrames"
        "CoalescePacketRateLow" "CoalescePacketRateHigh" "CoalescePacketRateSampleIntervalSec"
        "StatisticsBlockCoalesceSec" "MDI" "SR-IOVVirtualFunctions" "ScatterGather" "ScatterGatherFragmentList"
        "TCPECNSegmentationOffload" "TCPMangleIdSegmentationOffload" "GenericReceiveOffloadList"
        "GenericReceiveOffloadUDPForwarding"
      ] {
        MACAddressPolicy = oneOf [ "persistent" "random" "none" ];
        Duplex = oneOf [ "half" "full" ];
        AutoNegotiation = oneOf boolValues;
        Port = oneOf [ "tp" "aui" "bnc" "mii" "fibre" ];
      });
      netdevSection = t.unitSectionRequiring "Netdev" [ "Name" "Kind" ] (only [
        "Description" "Name" "Kind" "MTUBytes" "MACAddress"
      ] {
        Kind = oneOf [ "bond" "bridge" "dummy" "gre" "gretap" "erspan" "ip6gre" "ip6tnl" "ip6gretap" "ipip"
          "ipvlan" "ipvtap" "macvlan" "macvtap" "sit" "tap" "tun" "veth" "vlan" "vti" "vti6" "vxlan" "geneve" "hsr"
          "l2tp" "macsec" "vrf" "vcan" "vxcan" "wireguard" "nlmon" "fou" "xfrm" "ifb" "bareudp" "batadv" "ipoib" "wlan" ];
      });
      # assertInt "Id", assertRange "Id" 0 4094
      vlanSection = t.unitSection "VLAN" (only [
        "Id" "Protocol" "GVRP" "MVRP" "LooseBinding" "ReorderHeader" "EgressQOSMaps" "IngressQOSMaps"
      ] {
        Id = range 0 4094;
        Protocol = oneOf [ "802.1q" "802.1ad" ];
        GVRP = oneOf boolValues; MVRP = oneOf boolValues;
        LooseBinding = oneOf boolValues; ReorderHeader = oneOf boolValues;
      });
      networkSection = t.unitSection "Network" (only [
        "Description" "DHCP" "DHCPServer" "LinkLocalAddressing" "IPv6LinkLocalAddressGenerationMode"
        "IPv6StableSecretAddress" "IPv4LLStartAddress" "IPv4LLRoute" "DefaultRouteOnDevice" "LLMNR"
        "MulticastDNS" "DNSOverTLS" "DNSSEC" "DNSSECNegativeTrustAnchors" "LLDP" "EmitLLDP" "BindCarrier"
        "Address" "Gateway" "DNS" "UseDomains" "Domains" "DNSDefaultRoute" "NTP" "IPForward" "IPv4Forwarding"
        "IPv6Forwarding" "IPMasquerade" "IPv6PrivacyExtensions" "IPv6AcceptRA" "IPv6DuplicateAddressDetection"
        "IPv6HopLimit" "IPv6RetransmissionTimeSec" "IPv4DuplicateAddressDetectionTimeoutSec"
        "IPv4ReversePathFilter" "MulticastIGMPVersion" "IPv4AcceptLocal" "IPv4RouteLocalnet" "IPv4ProxyARP"
        "IPv4ProxyARPPrivateVLAN" "IPv6ProxyNDP" "IPv6ProxyNDPAddress" "IPv6SendRA" "DHCPPrefixDelegation"
        "IPv6MTUBytes" "MPLSRouting" "KeepMaster" "BatmanAdvanced" "Bridge" "Bond" "VRF" "IPoIB" "IPVLAN"
        "IPVTAP" "MACsec" "MACVLAN" "MACVTAP" "Tunnel" "VLAN" "VXLAN" "Xfrm" "ActiveSlave" "PrimarySlave"
        "ConfigureWithoutCarrier" "IgnoreCarrierLoss" "KeepConfiguration"
      ] {
        DHCP = oneOf (boolValues ++ [ "ipv4" "ipv6" ]);
        DHCPServer = oneOf boolValues;
        LinkLocalAddressing = oneOf (boolValues ++ [ "ipv4" "ipv6" ]);
        LLMNR = oneOf (boolValues ++ [ "resolve" ]);
        MulticastDNS = oneOf (boolValues ++ [ "resolve" ]);
        DNSOverTLS = oneOf (boolValues ++ [ "opportunistic" ]);
        DNSSEC = oneOf (boolValues ++ [ "allow-downgrade" ]);
        LLDP = oneOf (boolValues ++ [ "routers-only" ]);
        UseDomains = oneOf (boolValues ++ [ "route" ]);
        DNSDefaultRoute = oneOf boolValues;
        IPv4Forwarding = oneOf boolValues;
        IPv6Forwarding = oneOf boolValues;
        IPMasquerade = oneOf (boolValues ++ [ "ipv4" "ipv6" "both" ]);
        IPv6PrivacyExtensions = oneOf (boolValues ++ [ "prefer-public" "kernel" ]);
        IPv6AcceptRA = oneOf boolValues;
        IPv6HopLimit = int;
        IPv6SendRA = oneOf boolValues;
        ConfigureWithoutCarrier = oneOf boolValues;
        KeepConfiguration = oneOf (boolValues ++ [ "static" "dynamic-on-stop" "dynamic" ]);
      });
      # RequiredForOnline: boolValues, an operational state, or a range "min:max" of them.
      operationalStates = [ "missing" "off" "no-carrier" "dormant" "degraded-carrier" "carrier" "degraded" "enslaved" "routable" ];
      nStates = builtins.length operationalStates;
      stateRanges = builtins.concatLists (builtins.genList (i: builtins.genList (k:
        "${builtins.elemAt operationalStates i}:${builtins.elemAt operationalStates (i + k)}") (nStates - i)) nStates);
      networkSectionLink = t.unitSection "Link" (only [
        "MACAddress" "MTUBytes" "ARP" "Multicast" "AllMulticast" "Promiscuous" "Unmanaged" "Group"
        "RequiredForOnline" "RequiredFamilyForOnline" "ActivationPolicy"
      ] {
        ARP = oneOf boolValues; Multicast = oneOf boolValues; AllMulticast = oneOf boolValues;
        Promiscuous = oneOf boolValues; Unmanaged = oneOf boolValues;
        Group = range 0 2147483647;
        RequiredForOnline = oneOf (boolValues ++ operationalStates ++ stateRanges);
        RequiredFamilyForOnline = oneOf [ "ipv4" "ipv6" "both" "any" ];
        ActivationPolicy = oneOf [ "up" "always-up" "manual" "always-down" "down" "bound" ];
      });
    in
    {
      enable = bool netd;
      links = opt netd (t.attrsOf (t.submodule {
        options = commonNetworkOptions // { linkConfig = opt "${netd} (check.link.sectionLink)" linkSectionLink; };
      }));
      netdevs = opt netd (t.attrsOf (t.submodule {
        options = commonNetworkOptions // {
          netdevConfig = opt "${netd} (check.netdev.sectionNetdev)" netdevSection;
          vlanConfig = opt "${netd} (check.netdev.sectionVLAN)" vlanSection;
        };
      }));
      networks = opt netd (t.attrsOf (t.submodule {
        options = commonNetworkOptions // {
          name = opt netd (t.nullOr t.str);
          address = opt netd (t.listOf t.str);
          gateway = opt netd (t.listOf t.str);
          dns = opt netd (t.listOf t.str);
          domains = opt netd (t.nullOr (t.listOf t.str));
          vlan = opt netd (t.listOf t.str);
          networkConfig = opt "${netd} (check.network.sectionNetwork)" networkSection;
          linkConfig = opt "${netd} (check.network.sectionLink)" networkSectionLink;
        };
      }));
    };

  # ---- ssh.nix
  services.openssh = {
    enable = bool sshd;
    ports = opt sshd (t.listOf t.port);
    listenAddresses = opt sshd (t.listOf (t.submodule {
      options = {
        addr = opt sshd (t.nullOr t.str);
        port = opt sshd (t.nullOr t.port);
      };
    }));
    openFirewall = bool sshd;
    authorizedKeysInHomedir = bool sshd;
    hostKeys = opt sshd (t.listOf t.attrs);
    # settings: submodule { freeformType = settingsFormat.type (pkgs.formats.keyValue: atoms); options = { … }; }
    settings = opt sshd (t.submodule {
      freeformType = t.nullOr (t.oneOf [ t.bool t.int t.float t.str ]);
      options =
        let
          users = t.nullOr (t.listOf t.str);
          b = opt sshd (t.nullOr t.bool);
        in
        {
          AcceptEnv = opt sshd users;
          AllowGroups = opt sshd users;
          AllowUsers = opt sshd users;
          DenyGroups = opt sshd users;
          DenyUsers = opt sshd users;
          AuthorizedPrincipalsFile = opt sshd (t.nullOr t.str);
          Banner = opt sshd (t.nullOr t.path);
          Ciphers = opt sshd (t.nullOr (t.listOf t.str));
          KexAlgorithms = opt sshd (t.nullOr (t.listOf t.str));
          Macs = opt sshd (t.nullOr (t.listOf t.str));
          GatewayPorts = opt sshd (t.nullOr t.str);
          LogLevel = opt sshd (t.nullOr (t.enum [ "QUIET" "FATAL" "ERROR" "INFO" "VERBOSE" "DEBUG" "DEBUG1" "DEBUG2" "DEBUG3" ]));
          PermitRootLogin = opt sshd (t.nullOr (t.enum [ "yes" "without-password" "prohibit-password" "forced-commands-only" "no" ]));
          KbdInteractiveAuthentication = b;
          PasswordAuthentication = b;
          PrintMotd = b;
          StrictModes = b;
          UseDns = b;
          UsePAM = b;
          X11Forwarding = b;
        };
    });
  };

  # ---- users.nix
  users.mutableUsers = bool "config/users-groups.nix";
  users.users = opt "config/users-groups.nix" (t.attrsOfNamed
    { name = "a user name of 1 to 31 characters without colons or newlines"; check = n: builtins.match "[^:\n]{1,31}" n != null; }
    (t.submodule {
      options = {
        name = opt "config/users-groups.nix" (t.passwdEntry t.str);
        isNormalUser = bool "config/users-groups.nix";
        isSystemUser = bool "config/users-groups.nix";
        extraGroups = opt "config/users-groups.nix" (t.listOf t.str);
        hashedPassword = opt "config/users-groups.nix" (t.nullOr (t.passwdEntry t.str));
        # services/networking/ssh/sshd.nix userOptions
        openssh.authorizedKeys.keys = opt "${sshd} (userOptions)" (t.listOf t.singleLineStr);
        openssh.authorizedKeys.keyFiles = opt "${sshd} (userOptions)" (t.listOf t.path);
      };
    }));
  security.sudo = {
    enable = bool "security/sudo.nix";
    execWheelOnly = bool "security/sudo.nix";
    wheelNeedsPassword = bool "security/sudo.nix";
  };

  # ---- storage.nix
  services.rpcbind.enable = bool "services/networking/rpcbind.nix";
  services.nfs.server = {
    enable = bool "services/network-filesystems/nfsd.nix";
    exports = opt "services/network-filesystems/nfsd.nix" t.lines;
  };

  # ---- services.nix
  virtualisation.docker = {
    enable = bool "virtualisation/docker.nix";
    package = opt "virtualisation/docker.nix" t.package;
    autoPrune.enable = bool "virtualisation/docker.nix";
    # daemon.settings: submodule { freeformType = (pkgs.formats.json { }).type; options.live-restore = bool; }
    daemon.settings = opt "virtualisation/docker.nix" (t.submodule {
      freeformType = t.anything;
      options.live-restore = bool "virtualisation/docker.nix";
    });
  };
  virtualisation.libvirtd = {
    enable = bool "virtualisation/libvirtd.nix";
    onBoot = opt "virtualisation/libvirtd.nix" (t.enum [ "start" "ignore" ]);
    onShutdown = opt "virtualisation/libvirtd.nix" (t.enum [ "shutdown" "suspend" ]);
    qemu.runAsRoot = bool "virtualisation/libvirtd.nix (qemuModule)";
  };
  environment.etc = opt "system/etc/etc.nix" (t.attrsOf (t.submodule {
    options = {
      enable = bool "system/etc/etc.nix";
      text = opt "system/etc/etc.nix" (t.nullOr t.lines);
      source = opt "system/etc/etc.nix" t.path;
      target = opt "system/etc/etc.nix" t.str;
      mode = opt "system/etc/etc.nix" t.str;
    };
  }));

  # ---- services/<stack>/service.nix (labforge.stacks.<stack>.enable is declared by the module itself)
  assertions = opt "misc/assertions.nix" (t.listOf t.unspecified);
  systemd.tmpfiles.rules = opt "system/boot/systemd/tmpfiles.nix" (t.listOf t.str);
  systemd.services = opt "system/boot/systemd.nix" (t.attrsOf (t.submodule {
    options =
      let
        unitNames = opt "${units} (unitNameType)" (t.listOf t.str);
      in
      {
        enable = bool units;
        description = opt units t.singleLineStr;
        after = unitNames;
        before = unitNames;
        wants = unitNames;
        requires = unitNames;
        wantedBy = unitNames;
        requiredBy = unitNames;
        restartTriggers = opt units (t.listOf t.unitOption);
        reloadTriggers = opt units (t.listOf t.unitOption);
        unitConfig = opt units (t.attrsOf t.unitOption);
        # addCheck (attrsOf unitOption) checkService: Type and Restart must be systemd's values.
        serviceConfig = opt "${units} (checkService)" (t.unitSectionOpen "Service" {
          Type = t.enum [ "exec" "simple" "forking" "oneshot" "dbus" "notify" "notify-reload" "idle" ];
          Restart = t.enum [ "no" "on-success" "on-failure" "on-abnormal" "on-abort" "always" ];
        });
        script = opt units t.lines;
        path = opt units (t.listOf (t.either t.package t.str));
        environment = opt units (t.attrsOf (t.nullOr (t.oneOf [ t.str t.path t.package ])));
      };
  }));

  # ---- flake.nix: the inline module of lib.nixosSystem
  nixpkgs.hostPlatform = opt "misc/nixpkgs.nix" (t.either t.str t.attrs);

  # ---- nixos/lib/vm-test.nix (the flake's vm-verify check): its nodes' options. The test driver imports
  # virtualisation/qemu-vm.nix, which declares virtualisation.interfaces.
  virtualisation.interfaces = opt "virtualisation/qemu-vm.nix" (t.attrsOf (t.submodule {
    options = {
      vlan = opt "virtualisation/qemu-vm.nix" t.ints.unsigned;
      assignIP = bool "virtualisation/qemu-vm.nix";
    };
  }));
  virtualisation.vlans = opt "virtualisation/qemu-vm.nix" (t.listOf t.ints.unsigned);
  services.openssh.authorizedKeysFiles = opt sshd (t.listOf t.str);
  # tasks/network-interfaces.nix: interfaces = attrsOf (submodule interfaceOpts); ipv4.addresses =
  # listOf (submodule (addrOpts 4)) with prefixLength = addCheck int (n: n >= 0 && n <= 32).
  networking.interfaces = opt "tasks/network-interfaces.nix" (t.attrsOf (t.submodule {
    options = {
      useDHCP = opt "tasks/network-interfaces.nix" (t.nullOr t.bool);
      ipv4.addresses = opt "tasks/network-interfaces.nix" (t.listOf (t.submodule {
        options = {
          address = opt "tasks/network-interfaces.nix (addrOpts 4)" t.str;
          prefixLength = opt "tasks/network-interfaces.nix (addrOpts 4)" (t.ints.between 0 32);
        };
      }));
    };
  }));
}
