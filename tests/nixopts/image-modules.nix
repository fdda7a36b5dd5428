# Copies of the definitions the upstream image and board modules make, for tests/nixos_image.rs: what they set
# (values and priorities), not how (no nixpkgs code is copied; derivations are strings). Read from:
#   nixpkgs nixos/modules/installer/sd-card/sd-image.nix          00850412e84afb131272c7d14d7bdfe0717bbb6e
#   nixpkgs nixos/modules/installer/sd-card/sd-image-aarch64.nix  (imports profiles/base.nix + sd-image.nix;
#           base.nix enables ZFS where available: nixpkgs#562666)
#   nixos-hardware raspberry-pi/4/default.nix                     0e55a5963e01ad3f3e3ed98c3f87ccc144de6c36
#   nixos-hardware raspberry-pi/5/default.nix                     011660e3f7480f3ea807bb0e53003e6961872d12
#   nixos-hardware raspberry-pi/common/firmware.nix               0b655af52b5b89bcceb88737efdc3a7498e751ee
#           (the board profiles' firmware module, README.md at 2151720d04f43424a0c7da63c38b8f2e15e1cf4d)
# Simplified, and said so: base.nix's supportedFilesystems list part and sd-image.nix's build are left out;
# options these modules declare are not declared here (the walk in tests/nixos_options.rs types them).
let
  sdImage = { lib, ... }: {
    # sd-image.nix: plain definitions (priority 100), merged with the host's.
    hardware.enableAllHardware = true;
    fileSystems = {
      "/boot/firmware" = { device = "/dev/disk/by-label/FIRMWARE"; fsType = "vfat"; options = [ "nofail" "noauto" ]; };
      "/" = { device = "/dev/disk/by-label/NIXOS_SD"; fsType = "ext4"; };
    };
    # profiles/base.nix (imported by sd-image-aarch64.nix)
    boot.supportedFilesystems = { zfs = lib.mkDefault true; };
    # sd-image-aarch64.nix
    boot.loader.grub.enable = false;
    boot.loader.generic-extlinux-compatible.enable = true;
  };
  # common/firmware.nix: what it sets when U-Boot chainloading is on and an sd-image module is imported.
  firmware = { config, lib, ... }: {
    hardware.raspberry-pi.firmware.uboot.enable = lib.mkDefault false;
    hardware.raspberry-pi.configtxt.settings.all = lib.mkIf config.hardware.raspberry-pi.firmware.uboot.enable {
      kernel = lib.mkDefault "u-boot.bin";
      arm_64bit = lib.mkDefault true;
    };
    boot.loader.generic-extlinux-compatible.useGenerationDeviceTree =
      lib.mkIf config.hardware.raspberry-pi.firmware.uboot.enable (lib.mkDefault false);
    sdImage.populateFirmwareCommands = lib.mkForce "install-rpi-firmware ./firmware\n";
  };
in
{
  "/stub/nixpkgs/nixos/modules/installer/sd-card/sd-image-aarch64.nix" = sdImage;
  "nixos-hardware:raspberry-pi-4" = { lib, ... }: {
    imports = [ firmware ];
    boot.kernelPackages = lib.mkDefault "linuxKernel.packages.linux_rpi4";
    boot.initrd.availableKernelModules = [ "usbhid" "usb_storage" "vc4" "pcie_brcmstb" "reset-raspberrypi" ];
    boot.loader.grub.enable = lib.mkDefault false;
    boot.loader.generic-extlinux-compatible.enable = lib.mkDefault true;
    hardware.deviceTree.filter = "bcm2711-rpi-*.dtb";
    hardware.enableRedistributableFirmware = true;
  };
  "nixos-hardware:raspberry-pi-5" = { lib, ... }: {
    imports = [ firmware ];
    boot.kernelPackages = lib.mkDefault "linuxPackagesFor (raspberry-pi/common/kernel.nix rpiVersion = 5)";
    boot.initrd.availableKernelModules = [ "nvme" "pcie-brcmstb" "clk-rp1" ];
    hardware.deviceTree.filter = lib.mkDefault "bcm2712*-rpi-*.dtb";
  };
}
