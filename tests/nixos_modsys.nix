# A miniature NixOS module system, the test fixture behind tests/nixos_eval.rs (Nix 2.8 has no nixpkgs here):
# imports, options with defaults, mkIf pushed down like NixOS does, mkDefault/mkForce priorities, list
# concatenation and an error on conflicting definitions. Imports from nixpkgs (modulesPath) and flake inputs
# are recorded in `external`, not evaluated. It evaluates the rendered modules honestly; it is not NixOS.
# `copies` maps an external (its `_external` name or its modulesPath string) to a copy of the definitions
# that upstream module makes (tests/nixopts/image-modules.nix): it is then evaluated, and still recorded.
# `attrsOptions` are options of type attrsOf (submodule) whose priorities NixOS resolves on the whole option
# (filterOverrides over the option's definitions) before merging attributes: `fileSystems = mkForce { … }`
# replaces every other module's file systems, as in NixOS; below them, attributes merge as usual.
# `oracle` (the path of tests/nixopts) turns on the typed check: the option declarations of
# tests/nixopts/declarations.nix (copies of nixpkgs' types, tests/nixopts/types.nix) plus those the modules
# declare themselves (`options.…`), against which the merged configuration is checked as NixOS's
# lib.evalModules does — an undeclared option "does not exist", a value not of its option's type is an
# error — and the `assertions` are evaluated (unless `checkAssertions = false`: a golden tree holds the NixOS
# backend's files only, not the compose side the stack assertions look for). All of it lands in `errors`.
{ modules, specialArgs ? { }, pkgNames ? [ ], copies ? { }, attrsOptions ? [ [ "fileSystems" ] ], oracle ? null, checkAssertions ? true }:
let
  inherit (builtins) isAttrs isList isFunction isPath isString attrNames concatMap filter foldl' head all any listToAttrs;
  hasPrefix = p: s: builtins.substring 0 (builtins.stringLength p) s == p;
  modulesPath = "/stub/nixpkgs/nixos/modules";
  libBase = {
    mkIf = condition: content: { _type = "if"; inherit condition content; };
    mkDefault = content: { _type = "override"; priority = 1000; inherit content; };
    mkForce = content: { _type = "override"; priority = 50; inherit content; };
    mkEnableOption = name: { _type = "option"; default = false; description = "Whether to enable ${name}."; }
      // (if typed != null then { type = typed.types.bool; } else { });
    concatStringsSep = builtins.concatStringsSep;
    concatLines = ls: builtins.concatStringsSep "" (map (l: l + "\n") ls);
  };
  typed = if oracle == null then null else import (oracle + "/types.nix");
  lib = libBase // (if typed != null then { inherit (typed) types mkOption; } else { });
  pkgs = listToAttrs (map (n: { name = n; value = "/stub/pkgs/${n}"; }) pkgNames);
  args = { inherit config lib pkgs modulesPath; } // specialArgs;

  withCopy = name: if copies ? ${name} then let c = load copies.${name}; in c // { external = [ name ] ++ c.external; }
    else { external = [ name ]; defs = [ ]; opts = [ ]; };
  load = m:
    if isAttrs m && m ? _external then withCopy m._external
    else if isString m && hasPrefix modulesPath m then withCopy m
    else
      let
        file = if isPath m || isString m then [ (toString m) ] else [ ];
        f = if isPath m || isString m then import m else m;
        v = if isFunction f then f args else f;
        subs = map load (v.imports or [ ]);
        structured = v ? config || v ? options;
        own = if structured then v.config or { } else removeAttrs v [ "imports" ];
      in {
        files = file ++ concatMap (s: s.files or [ ]) subs;
        external = concatMap (s: s.external) subs;
        defs = [ own ] ++ concatMap (s: s.defs) subs;
        opts = (if v ? options then [ v.options ] else [ ]) ++ concatMap (s: s.opts) subs;
      };

  loaded = map load modules;
  external = concatMap (l: l.external) loaded;
  optionDefaults = o:
    if (o._type or null) == "option" then
      (if o ? default then { _type = "override"; priority = 1500; content = o.default; } else { _type = "if"; condition = false; content = null; })
    else builtins.mapAttrs (_: optionDefaults) o;
  defs = concatMap (l: l.defs) loaded ++ map optionDefaults (concatMap (l: l.opts) loaded);

  isPlain = d: isAttrs d && !(d ? _type);
  pushDown = d:
    if isAttrs d && (d._type or null) == "if" then
      let c = pushDown d.content; in
      if isPlain c then builtins.mapAttrs (_: v: { _type = "if"; condition = d.condition; content = v; }) c else d // { content = c; }
    else if isAttrs d && (d._type or null) == "override" then
      let c = pushDown d.content; in
      if isPlain c then builtins.mapAttrs (_: v: { _type = "override"; inherit (d) priority; content = v; }) c else d // { content = c; }
    else d;

  absent = { _absent = true; };
  # Leaf resolution: drop false mkIfs, keep the highest-priority definitions, concatenate lists.
  unwrapIf = d: if isAttrs d && (d._type or null) == "if" then (if d.condition then unwrapIf d.content else absent) else d;
  prio = d: if isAttrs d && (d._type or null) == "override" then d.priority else 100;
  content = d: if isAttrs d && (d._type or null) == "override" then content d.content else d;
  merge = path: ds:
    let pushed = map pushDown ds; in
    if builtins.elem path attrsOptions then
      let
        # mkIf on the whole value is discharged here; mkIf inside it stays for the attributes.
        discharged = filter (d: !(isAttrs d && d ? _absent)) (map (d: if isAttrs d && (d._type or null) == "if" then (if d.condition then d.content else absent) else d) ds);
        best = foldl' (m: d: if prio d < m then prio d else m) 2000 discharged;
        vals = map content (filter (d: prio d == best) discharged);
      in if vals == [ ] then absent else mergeAttrs path vals
    else mergeAttrs path ds;
  mergeAttrs = path: ds:
    let pushed = map pushDown ds; in
    if pushed != [ ] && all isPlain pushed then
      let
        names = attrNames (foldl' (acc: d: acc // d) { } pushed);
        # Names never depend on an mkIf condition (NixOS knows them from option declarations; here a
        # leaf whose every definition is switched off holds `absent`, dropped by `clean` at the end).
        sub = n: merge (path ++ [ n ]) (map (d: d.${n}) (filter (d: d ? ${n}) pushed));
      in listToAttrs (map (n: { name = n; value = sub n; }) names)
    else
      let
        active = filter (d: !(isAttrs d && d ? _absent)) (map unwrapIf pushed);
        best = foldl' (m: d: if prio d < m then prio d else m) 2000 active;
        vals = map content (filter (d: prio d == best) active);
      in
      if vals == [ ] then absent
      else if all isList vals then builtins.concatLists vals
      else if all isPlain vals then merge path vals
      else if all (v: v == head vals) vals then head vals
      else throw "conflicting definitions of ${builtins.concatStringsSep "." path}";

  config = merge [ ] defs;
  clean = v:
    if isPlain v then
      listToAttrs (map (n: { name = n; value = clean v.${n}; }) (filter (n: !(isAttrs v.${n} && v.${n} ? _absent)) (attrNames v)))
    else if isList v then map clean v
    else v;

  # The typed check (see `oracle` above).
  isOption = d: isAttrs d && (d._type or null) == "option";
  mergeDecls = a: b: a // builtins.mapAttrs (n: v: if a ? ${n} && !(isOption v) && !(isOption a.${n}) then mergeDecls a.${n} v else v) b;
  declarations =
    foldl' mergeDecls (import (oracle + "/declarations.nix") { inherit (typed) types mkOption; }) (concatMap (l: l.opts) loaded);
  final = clean config;
  failedAssertions = if !checkAssertions then [ ] else
    map (a: "Failed assertion: ${a.message}") (filter (a: !a.assertion) (final.assertions or [ ]));
  errors = if oracle == null then [ ] else typed.verifyOptions [ ] declarations null final ++ failedAssertions;
in
{ config = final; inherit external errors; files = concatMap (l: l.files or [ ]) loaded; }
