# A miniature `lib.types` for the module-system oracle (tests/nixos_modsys.nix with `declarations`): the
# names and `check` semantics of nixpkgs' lib/types.nix (and the systemd unit helpers of
# nixos/lib/systemd-lib.nix / systemd-unit-options.nix), without merging. A type here is
# { _type = "option-type"; name; verify = path: value: [ errors ]; }: `verify` walks into lists, attribute
# sets and submodules the way the module system type-checks every definition, and returns one message per
# wrong value in NixOS's wording ("A definition for option `a.b' is not of type `T'."). Checked against the
# merged value (after mkIf/mkDefault/mkForce), which is what NixOS checks each definition's value against too.
let
  inherit (builtins) isAttrs isList isString isBool isInt isFloat isPath isFunction
    attrNames concatMap genList length elemAt match elem typeOf toJSON;
  hasPrefix = p: s: builtins.substring 0 (builtins.stringLength p) s == p;
  showPath = path: builtins.concatStringsSep "." (map (s: if match "[a-zA-Z_][a-zA-Z0-9_'-]*" s != null then s else toJSON s) path);
  show = v:
    if isString v then toJSON v
    else if isBool v || isInt v || isFloat v || v == null then toJSON v
    else if isList v then "a list"
    else if isFunction v then "a function"
    else if isPath v then toString v
    else if isAttrs v then "an attribute set"
    else typeOf v;
  wrong = path: t: v: [ "A definition for option `${showPath path}' is not of type `${t.name}'. Definition value: ${show v}" ];
  leaf = name: check: { _type = "option-type"; inherit name; verify = path: v: if check v then [ ] else wrong path { inherit name; } v; };
  # Derivations are stubbed as strings: `pkgs.<name>` is "/stub/pkgs/<name>", the store is /nix/store.
  isDerivationLike = v: (isAttrs v && (v.type or null) == "derivation") || (isString v && (hasPrefix "/stub/" v || hasPrefix "/nix/store/" v));
  isStringLike = v: isString v || isPath v || (isAttrs v && (v ? outPath || v ? __toString));
  intBetween = lo: hi: leaf "integer between ${toString lo} and ${toString hi} (both inclusive)" (v: isInt v && v >= lo && v <= hi);

  # Options of a submodule (or the top level): every attribute of `value` must be a declared option, a
  # namespace of options, or fall to the freeform type.
  verifyOptions = path: decls: freeform: value:
    if !(isAttrs value) then [ "A definition for option `${showPath path}' is not an attribute set of options. Definition value: ${show value}" ]
    else concatMap (n:
      let p = path ++ [ n ]; v = value.${n}; in
      if decls ? ${n} then
        (if isOption decls.${n} then decls.${n}.type.verify p v else verifyOptions p decls.${n} null v)
      else if freeform != null then freeform.verify p v
      else [ "The option `${showPath p}' does not exist." ]
    ) (attrNames value);
  isOption = d: isAttrs d && (d._type or null) == "option";

  types = rec {
    # lib.types.mkOptionType { name; check; } (for a type nixpkgs builds itself, e.g. a recursive one).
    mkOptionType = { name, check ? (_: true), ... }: leaf name check;
    bool = leaf "boolean" isBool;
    int = leaf "signed integer" isInt;
    float = leaf "floating point number" isFloat;
    str = leaf "string" isString;
    lines = leaf "strings concatenated with \"\\n\"" isString;
    nonEmptyStr = leaf "non-empty string" (v: isString v && match "[ \t\n]*" v == null);
    singleLineStr = leaf "(optionally newline-terminated) single-line string" (v: isString v && match "[^\n]*\n?" v != null);
    path = leaf "path" (v: isPath v || (isStringLike v && hasPrefix "/" (toString v)));
    package = leaf "package" isDerivationLike;
    attrs = leaf "attribute set" isAttrs;
    anything = leaf "anything" (_: true);
    unspecified = leaf "unspecified value" (_: true);
    raw = leaf "raw value" (_: true);
    port = intBetween 0 65535;
    ints = {
      between = intBetween;
      unsigned = leaf "unsigned integer, meaning >=0" (v: isInt v && v >= 0);
      positive = leaf "positive integer, meaning >0" (v: isInt v && v > 0);
      u8 = intBetween 0 255;
      u16 = intBetween 0 65535;
    };
    strMatching = re: leaf "string matching the pattern ${re}" (v: isString v && match re v != null);
    passwdEntry = t: {
      _type = "option-type";
      name = "${t.name}, not containing newlines or colons";
      verify = path: v: t.verify path v ++ (if isString v && match "[^:\n]*" v == null then wrong path { name = "${t.name}, not containing newlines or colons"; } v else [ ]);
    };
    enum = vals: leaf "one of ${builtins.concatStringsSep ", " (map toJSON vals)}" (v: elem v vals);
    nullOr = t: { _type = "option-type"; name = "null or ${t.name}"; inner = [ t ]; verify = path: v: if v == null then [ ] else t.verify path v; };
    listOf = t: {
      _type = "option-type";
      name = "list of ${t.name}";
      elem = t;
      verify = path: v: if !(isList v) then wrong path { name = "list of ${t.name}"; } v
        else concatMap (i: t.verify (path ++ [ "[definition 1-entry ${toString (i + 1)}]" ]) (elemAt v i)) (genList (i: i) (length v));
    };
    nonEmptyListOf = t: let l = listOf t; in l // {
      name = "non-empty ${l.name}";
      verify = path: v: if v == [ ] then wrong path { name = "non-empty ${l.name}"; } v else l.verify path v;
    };
    attrsOf = t: {
      _type = "option-type";
      name = "attribute set of ${t.name}";
      attr = t;
      verify = path: v: if !(isAttrs v) then wrong path { name = "attribute set of ${t.name}"; } v
        else concatMap (n: t.verify (path ++ [ n ]) v.${n}) (attrNames v);
    };
    # `attrsOf` whose attribute names nixpkgs constrains (fileSystems' mount points, users' names).
    attrsOfNamed = nameCheck: t: let a = attrsOf t; in a // {
      verify = path: v: a.verify path v ++ (if isAttrs v then concatMap (n: if nameCheck.check n then [ ] else [ "The name `${n}' of option `${showPath path}' is not ${nameCheck.name}." ]) (attrNames v) else [ ]);
    };
    either = a: b: {
      _type = "option-type";
      name = "${a.name} or ${b.name}";
      inner = [ a b ];
      verify = path: v: if a.verify path v == [ ] || b.verify path v == [ ] then [ ] else wrong path { name = "${a.name} or ${b.name}"; } v;
    };
    oneOf = ts: builtins.foldl' either (builtins.head ts) (builtins.tail ts);
    # coercedTo from f to: a value of `from` is converted with `f`, then checked against `to`.
    coercedTo = from: f: to: {
      _type = "option-type";
      name = "${to.name} or ${from.name} convertible to it";
      inner = [ from to ];
      verify = path: v: if from.verify path v == [ ] then to.verify path (f v) else to.verify path v;
    };
    addCheck = t: name: check: t // { verify = path: v: let e = t.verify path v; in if e != [ ] then e else check path v; };
    # submodule { options = { … }; freeformType = …; }: the declared options, the rest free-form or an error.
    submodule = m: {
      _type = "option-type";
      name = "submodule";
      options = m.options or { };
      verify = path: v: verifyOptions path (m.options or { }) (m.freeformType or null) v;
    };

    # nixos/lib/systemd-unit-options.nix: `unitOption = mkOptionType { name = "systemd option"; merge = …; }`
    # has no check of its own; the unit-file writer (systemd-lib.nix attrsToSection) then turns each value
    # into text with toString, which fails at evaluation for anything but an atom or a list of atoms. That
    # failure is checked here, as a type.
    unitOption =
      let atom = v: isBool v || isInt v || isFloat v || isStringLike v || isDerivationLike v; in
      leaf "systemd option" (v: atom v || (isList v && builtins.all atom v));
    # A systemd/networkd section: `addCheck (attrsOf unitOption) (checkUnitConfig "Section" [ (assertOnlyFields
    # [ … ]) (assertValueOneOf … ) … ])` in nixpkgs. `fields` maps each allowed field to null (any unit
    # option) or a type its value must have (assertValueOneOf → enum, assertRange → ints.between …).
    unitSection = section: fields: unitSectionRequiring section [ ] fields;
    # … with assertHasField for `required` (only checked on a section that is defined at all).
    unitSectionRequiring = section: required: fields: { inherit fields; } // addCheck (attrsOf unitOption) "[${section}] section" (path: v:
      concatMap (n:
        if !(fields ? ${n}) then [ "The option definition `${showPath (path ++ [ n ])}' has an unknown field: systemd's [${section}] section does not have ${n} (nixpkgs: assertOnlyFields)." ]
        else if fields.${n} == null then [ ]
        else fields.${n}.verify (path ++ [ n ]) v.${n}
      ) (attrNames v)
      ++ concatMap (n: if v ? ${n} then [ ] else [ "The option definition `${showPath path}' lacks the field ${n} systemd's [${section}] section needs (nixpkgs: assertHasField)." ]) required);
    # A section whose other fields are free (checkService: assertValueOneOf on some fields, no assertOnlyFields).
    unitSectionOpen = section: fields: { inherit fields; } // addCheck (attrsOf unitOption) "[${section}] section" (path: v:
      concatMap (n: if fields ? ${n} then fields.${n}.verify (path ++ [ n ]) v.${n} else [ ]) (attrNames v));
  };

  mkOption = { type ? types.unspecified, default ? null, src ? null, ... }@a:
    { _type = "option"; inherit type src; } // (if a ? default then { inherit default; } else { });
  # Every option path a declaration tree declares, as tests/nixos-options.toml spells them (`<name>` for an
  # attribute of an attrsOf, `*` for an element of a listOf, a unit section's fields below it), with the
  # source file its declaration names: [ { path; src; } ].
  optionPaths = prefix: decls: concatMap (n:
    let p = prefix ++ [ n ]; d = decls.${n}; in
    if isOption d then [ { path = builtins.concatStringsSep "." p; inherit (d) src; } ] ++ typePaths p d.src d.type
    else optionPaths p d
  ) (attrNames decls);
  typePaths = p: src: t:
    let
      entry = q: { path = builtins.concatStringsSep "." q; inherit src; };
      under = seg: sub: let q = p ++ [ seg ]; l = typePaths q src sub; in if l == [ ] then [ ] else [ (entry q) ] ++ l;
    in
    if t ? options then optionPaths p t.options
    else if t ? fields then map (f: entry (p ++ [ f ])) (attrNames t.fields)
    else if t ? attr then under "<name>" t.attr
    else if t ? elem then under "*" t.elem
    else if t ? inner then concatMap (typePaths p src) t.inner
    else [ ];
in
{
  inherit types mkOption verifyOptions isOption showPath optionPaths;
  mkEnableOption = name: mkOption { type = types.bool; default = false; };
}
