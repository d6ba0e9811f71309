"""Hyperparameters: frozen dataclasses per method that read the reference hparams JSON files.

``ROMEHyperParams.from_json("hparams/ROME/gpt2-xl.json")`` reads kmeng01's file unchanged;
r-ROME's files (scalable-model-editing/rebuilding-rome) read into :class:`RROMEHyperParams`, whose
defaults switch on its corrected key handling; AlphaEdit's MEMIT files (with ``model_name``) read
into :class:`MEMITHyperParams`. Unknown keys are rejected by name, missing ones too.

Presets (``ROMEHyperParams.preset("gpt2-xl")``) ship in ``fastedit/presets/<METHOD>/<model>.json``
in the same layout; :data:`PRESET_SOURCES` says where each one's values come from.

fastedit's own additions (all optional, defaulting to the reference behaviour):

* ``subject_index_rule``: ``"additive"`` (kmeng01: tokenise prefix, subject and suffix separately and
  add the lengths) or ``"concat"`` (AlphaEdit: ``len(encode(prefix + subject)) - 1``, right for
  tokenizers that prepend BOS to every piece).
* ``strip_target_bos``: drop a BOS the tokenizer puts in front of the target (AlphaEdit does, kmeng01
  counts it among the target tokens).
* ``target_skip_tokens``: drop exactly this many leading tokens of the target instead (None: the
  ``strip_target_bos`` rule). A method whose reference drops a fixed count on some models names them in
  ``MODEL_TARGET_SKIP``, and :meth:`HyperParams.resolve` sets it from the model's name (EMMET on
  Llama-2: 2).
* ``solve_dtype``: ``None`` for each method's reference precision (ROME inverts C in float32, MEMIT
  solves in float64), or ``"float64"`` / ``"float32"`` to force one.

EasyEdit's YAML files (``hparams/ROME/gpt2-xl.yaml``) load too, through ``from_yaml``, ``from_hparams``
(EasyEdit's own name, ``.yaml`` appended when missing) or :func:`load_hparams` with a ``.yaml`` path.
Their numbers written as ``5e-1`` (a string to YAML) are read as numbers, as EasyEdit reads them. Of
their extra keys, ``alg_name`` must name the method asked for, ``stats_dir`` is where the statistics
are kept (as in EasyEdit), and the run-time keys in :data:`EASYEDIT_RUNTIME_KEYS` are kept on the
object (``hp.device``) for :mod:`fastedit.easyedit`, which honours them; elsewhere they are ignored,
with a note in the log.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import logging
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Mapping

from .errors import InputError, PathEscapeError, safe_component

__all__ = [
    "HyperParams",
    "ROMEHyperParams",
    "RROMEHyperParams",
    "MEMITHyperParams",
    "HyperParamsError",
    "PRESET_SOURCES",
    "hparams_class",
    "load_hparams",
    "EASYEDIT_RUNTIME_KEYS",
]

log = logging.getLogger(__name__)

PRESET_DIR = Path(__file__).parent / "presets"
FACT_TOKENS = ("subject_last", "subject_first", "subject_first_after_last", "last")
INDEX_RULES = ("additive", "concat")

# EasyEdit's keys that configure its run rather than the method, with their defaults there and what
# fastedit.easyedit does with each.
EASYEDIT_RUNTIME_KEYS: dict[str, tuple[Any, str]] = {
    "device": (0, "the CUDA device index the model is moved to (the CPU when there is no GPU)"),
    "model_parallel": (False, "load the model spread over the GPUs (device_map='auto')"),
    "fp16": (False, "load the model in float16"),
    "max_length": (40, "the least padding length of the evaluation's tokenisation"),
    "batch_size": (1, "requests per edit in BaseEditor.batch_edit"),
}


class HyperParamsError(InputError):
    """Malformed hyperparameters: the message names the field."""


def _is_int(x) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _is_real(x) -> bool:
    try:
        return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(float(x))
    except OverflowError:  # an integer beyond float range
        return False


def _int(lo: int):
    return lambda x: (f"an integer >= {lo}" if not (_is_int(x) and x >= lo) else None)


def _real(lo: float, strict: bool):
    what = f"a finite number {'>' if strict else '>='} {lo:g}"
    return lambda x: (what if not (_is_real(x) and (x > lo if strict else x >= lo)) else None)


def _choice(options):
    return lambda x: (f"one of {options}" if x not in options or not isinstance(x, (str, type(None))) else None)


def _bool(x):
    return None if isinstance(x, bool) else "true or false"


def _name(optional: bool):
    def check(x):
        if x is None and optional:
            return None
        return None if isinstance(x, str) and x.strip() else "a non-empty string"

    return check


def _dataset_name(x):
    if not (isinstance(x, str) and x.strip()):
        return "a non-empty string"
    try:
        safe_component(x, "mom2_dataset")
    except PathEscapeError:
        return "a plain name (it becomes a folder name: no '/', '\\' or '..')"
    return None


# What each shared field must hold (a check returns None, or what the value should have been).
_RULES = {
    "fact_token": _choice(FACT_TOKENS),
    "v_num_grad_steps": _int(1),
    "v_lr": _real(0, True),
    "v_loss_layer": _int(-1),  # -1 (or any layer below the edit): the loss is read at the edit layer
    "v_weight_decay": _real(0, False),
    "clamp_norm_factor": _real(0, True),
    "kl_factor": _real(0, False),
    "mom2_adjustment": _bool,
    "ln_f_module": _name(True),
    "lm_head_module": _name(True),
    "mom2_dataset": _dataset_name,
    "mom2_n_samples": _int(1),
    "mom2_dtype": _choice(("float32", "float64", "float16", "bfloat16")),
    "mom2_min_count": lambda x: None if x is None else _int(0)(x),
    "model_name": _name(True),
    "subject_index_rule": _choice(INDEX_RULES),
    "strip_target_bos": _bool,
    "target_skip_tokens": lambda x: None if x is None else _int(0)(x),
    "solve_dtype": _choice((None, "float32", "float64")),
    "stats_dir": _name(True),
    "alg_name": _name(True),
}
_TEMPLATES = ("rewrite_module_tmp", "layer_module_tmp", "mlp_module_tmp", "attn_module_tmp")


def _check_template(name: str, tmp, plural: bool) -> str | None:
    """A module template: None, or a string that formats with a layer number and holds ``{}`` when it
    must name more than one module (``layer_module_tmp`` always does: the layers above are run)."""
    if tmp is None:
        return None
    if not isinstance(tmp, str) or not tmp.strip():
        return "a non-empty string"
    try:
        filled = tmp.format(0)
    except (IndexError, KeyError, ValueError):
        return "a module name with one '{}' for the layer number (other braces break formatting)"
    if tmp.count("{}") > 1 or "{" in filled or "}" in filled:
        return "a module name with one '{}' for the layer number (other braces break formatting)"
    if "{}" not in tmp and (plural or name == "layer_module_tmp"):
        return "a module name with '{}' for the layer number (it names one module per layer)"
    return None


@dataclass(frozen=True)
class HyperParams:
    """Fields shared by every locate-and-edit method. Module templates left at ``None`` are taken
    from the model's architecture adapter. ``mom2_min_count`` (fastedit's): the fewest key vectors a
    statistics file may hold (default: the layer's width, below which C is singular; 0 turns the
    check off)."""

    METHOD: ClassVar[str] = ""
    PRESET_FOLDER: ClassVar[str] = ""
    # (model-name substring, count): the reference drops ``count`` leading target tokens on a model whose
    # name_or_path contains the substring (lower case); :meth:`resolve` applies the first match.
    MODEL_TARGET_SKIP: ClassVar[tuple[tuple[str, int], ...]] = ()

    layers: tuple[int, ...]
    fact_token: str = "subject_last"
    v_num_grad_steps: int = 20
    v_lr: float = 0.5
    v_loss_layer: int = -1
    v_weight_decay: float = 0.5
    clamp_norm_factor: float = 4.0
    kl_factor: float = 0.0625
    mom2_adjustment: bool = True

    rewrite_module_tmp: str | None = None
    layer_module_tmp: str | None = None
    mlp_module_tmp: str | None = None
    attn_module_tmp: str | None = None
    ln_f_module: str | None = None
    lm_head_module: str | None = None

    mom2_dataset: str = "wikipedia"
    mom2_n_samples: int = 100000
    mom2_dtype: str = "float32"
    mom2_min_count: int | None = None

    model_name: str | None = None  # present in AlphaEdit's and EasyEdit's files; informational here
    subject_index_rule: str = "additive"
    strip_target_bos: bool = False
    target_skip_tokens: int | None = None
    solve_dtype: str | None = None

    # EasyEdit's files: the statistics folder (used when none is passed to the session), its method
    # name (checked), and its run-time keys as (key, value) pairs (see EASYEDIT_RUNTIME_KEYS). The
    # run-time keys configure a run, not the edit, so they take no part in equality.
    stats_dir: str | None = None
    alg_name: str | None = None
    easyedit_runtime: tuple[tuple[str, Any], ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        layers = self.layers
        if isinstance(layers, (str, bytes)) or not isinstance(layers, (list, tuple)) or not all(map(_is_int, layers)):
            self._fail("layers", layers, "a list of integers")
        # Lists from JSON become tuples so the dataclass stays hashable and frozen all the way down.
        object.__setattr__(self, "layers", tuple(int(x) for x in layers))
        if not self.layers:
            self._fail("layers", layers, "a non-empty list of layer numbers")
        if min(self.layers) < 0:
            self._fail("layers", layers, "a list of layer numbers >= 0")
        self._check_rules(_RULES)
        for name in _TEMPLATES:
            want = _check_template(name, getattr(self, name), len(self.layers) > 1)
            if want:
                self._fail(name, getattr(self, name), want)

    def _check_rules(self, rules) -> None:
        for name, rule in rules.items():
            value = getattr(self, name)
            want = rule(value)
            if want:
                self._fail(name, value, want)

    def _fail(self, name: str, value, want: str):
        raise HyperParamsError(f"{type(self).__name__}: {name} must be {want}, got {value!r}")

    def __getattr__(self, name: str) -> Any:
        # EasyEdit's scripts read its run-time keys as attributes (hparams.device, hparams.batch_size).
        if name in EASYEDIT_RUNTIME_KEYS:
            return dict(self.__dict__.get("easyedit_runtime", ())).get(name, EASYEDIT_RUNTIME_KEYS[name][0])
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    # ------------------------------------------------------------------ reading and writing
    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "HyperParams":
        data = dict(data)
        if "easyedit_runtime" in data:  # made here from EasyEdit's run-time keys, never read
            raise HyperParamsError(f"{cls.__name__}: unknown key(s) 'easyedit_runtime' (give EasyEdit's "
                                   f"run-time keys themselves: {', '.join(EASYEDIT_RUNTIME_KEYS)})")
        runtime = {k: data.pop(k) for k in list(data) if k in EASYEDIT_RUNTIME_KEYS}
        if runtime:
            data["easyedit_runtime"] = tuple(sorted(runtime.items()))
        alg = data.get("alg_name")
        if alg is not None and cls.METHOD:
            from .methods.registry import easyedit_names

            names = easyedit_names()
            if names.get(str(alg).upper()) != cls.METHOD:
                raise HyperParamsError(
                    f"{cls.__name__}: alg_name {alg!r} is not {cls.METHOD!r} "
                    f"(EasyEdit names: {', '.join(f'{k} = {v}' for k, v in names.items())})"
                )
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise HyperParamsError(f"{cls.__name__}: unknown key(s) {', '.join(map(repr, unknown))}")
        missing = [
            f.name
            for f in fields(cls)
            if f.name not in data and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ]
        if missing:
            raise HyperParamsError(f"{cls.__name__}: missing key(s) {', '.join(map(repr, missing))}")
        return cls(**data)

    @classmethod
    def from_json(cls, path: str | Path) -> "HyperParams":
        path = Path(path)
        try:
            data = json.loads(_read(path))
        except json.JSONDecodeError as e:
            raise HyperParamsError(f"{path}: not valid JSON ({e})") from e
        return cls._from_file_data(path, data)

    @classmethod
    def from_yaml(cls, path: str | Path) -> "HyperParams":
        """An EasyEdit hparams YAML file (or any YAML mapping of this class's keys)."""
        import yaml

        path = Path(path)
        try:
            data = yaml.safe_load(_read(path))
        except yaml.YAMLError as e:
            raise HyperParamsError(f"{path}: not valid YAML ({e})") from e
        if isinstance(data, dict):
            data = cls._numbers_from_strings(data)
        return cls._from_file_data(path, data)

    @classmethod
    def from_file(cls, path: str | Path) -> "HyperParams":
        """A ``.yaml``/``.yml`` file through :meth:`from_yaml`, anything else through :meth:`from_json`."""
        path = Path(path)
        return cls.from_yaml(path) if path.suffix.lower() in YAML_SUFFIXES else cls.from_json(path)

    @classmethod
    def from_hparams(cls, hparams_name_or_path: str | Path) -> "HyperParams":
        """EasyEdit's constructor: a file path, ``.yaml`` appended when the name has no suffix of a
        hyperparameter file (``from_hparams("hparams/ROME/gpt2-xl")``)."""
        path = Path(hparams_name_or_path)
        if path.suffix.lower() not in YAML_SUFFIXES + (".json",):
            path = path.with_name(path.name + ".yaml")
        return cls.from_file(path)

    @classmethod
    def _from_file_data(cls, path: Path, data: Any) -> "HyperParams":
        if not isinstance(data, dict):
            raise HyperParamsError(f"{path}: expected a mapping of hyperparameters, got {type(data).__name__}")
        try:
            hp = cls.from_dict(data)
        except (HyperParamsError, TypeError) as e:
            raise HyperParamsError(f"{path}: {e}") from e
        if hp.easyedit_runtime:
            log.info(
                "%s: EasyEdit run-time key(s) %s are honoured by fastedit.easyedit only, ignored elsewhere",
                path, ", ".join(k for k, _ in hp.easyedit_runtime),
            )
        return hp

    @classmethod
    def _numbers_from_strings(cls, data: dict) -> dict:
        """YAML reads ``5e-1`` (no dot) as a string; EasyEdit turns such strings into numbers, and so
        does this, for the fields that hold numbers."""
        numeric = {f.name for f in fields(cls) if str(f.type).split(" |")[0] in ("int", "float")}
        numeric |= {k for k, (default, _) in EASYEDIT_RUNTIME_KEYS.items() if type(default) in (int, float)}
        out = dict(data)
        for key, value in data.items():
            if key in numeric and isinstance(value, str):
                try:
                    number = float(value)
                except ValueError:
                    continue  # left as it is; the field's own check names it
                out[key] = int(number) if number.is_integer() and "." not in value and "e" not in value.lower() else number
        return out

    @classmethod
    def preset(cls, model: str) -> "HyperParams":
        """A shipped preset by model name (``gpt2-xl``, ``gpt-j-6b``, ``llama-3-8b``, ``smollm2-135m``)."""
        path = PRESET_DIR / cls.PRESET_FOLDER / f"{model}.json"
        if not path.exists():
            have = sorted(p.stem for p in (PRESET_DIR / cls.PRESET_FOLDER).glob("*.json"))
            raise HyperParamsError(f"no {cls.METHOD} preset for {model!r}; presets: {', '.join(have)}")
        return cls.from_json(path)

    @classmethod
    def preset_for(cls, model_name: str) -> str | None:
        """The name of this method's shipped preset that ``model_name`` (a hub id or a folder) names,
        the longest match first, or None."""
        name = str(model_name).lower().replace("_", "-")
        stems = sorted((p.stem for p in (PRESET_DIR / cls.PRESET_FOLDER).glob("*.json")), key=len, reverse=True)
        return next((s for s in stems if s in name), None)

    def to_dict(self) -> dict[str, Any]:
        """The hyperparameters as one flat mapping (EasyEdit's run-time keys among them, when read from
        its file), which :meth:`from_dict` reads back."""
        out = dataclasses.asdict(self)
        out.update(dict(out.pop("easyedit_runtime")))
        for key in ("stats_dir", "alg_name"):
            if out[key] is None:
                del out[key]
        out["layers"] = list(self.layers)
        if "context_template_length_params" in out:
            out["context_template_length_params"] = [list(x) for x in out["context_template_length_params"]]
        return out

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    def replace(self, **changes) -> "HyperParams":
        return dataclasses.replace(self, **changes)

    def resolve(self, adapter, model) -> "HyperParams":
        """These hyperparameters with every module name left at None filled in from the model's
        architecture adapter, and ``target_skip_tokens`` left at None from :attr:`MODEL_TARGET_SKIP`
        and the model's name, so nothing downstream looks either up again."""
        names = {attr: getattr(self, attr) or getattr(adapter, attr) for attr in _TEMPLATES}
        names["ln_f_module"] = self.ln_f_module or adapter.ln_f_module
        names["lm_head_module"] = self.lm_head_module or adapter.lm_head_name(model)
        if self.target_skip_tokens is None:
            names["target_skip_tokens"] = self.model_target_skip(getattr(model.config, "_name_or_path", ""))
        return dataclasses.replace(self, **names)

    @classmethod
    def model_target_skip(cls, model_name: str | None) -> int | None:
        """The leading target tokens this method's reference drops on the model ``model_name``
        (a hub id or a folder), or None where it applies ``strip_target_bos``."""
        name = str(model_name or "").lower()
        return next((count for part, count in cls.MODEL_TARGET_SKIP if part in name), None)


@dataclass(frozen=True)
class ROMEHyperParams(HyperParams):
    """ROME (Meng et al. 2022), as in kmeng01/rome. The three r-ROME switches default to the original
    ROME behaviour here; :class:`RROMEHyperParams` defaults them to r-ROME's."""

    METHOD: ClassVar[str] = "rome"
    PRESET_FOLDER: ClassVar[str] = "ROME"

    context_template_length_params: tuple[tuple[int, int], ...] = ((5, 10), (10, 10))
    enable_prompt_keys: bool = False
    enable_random_prefix_keys: bool = False
    original_implementation: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        params = self.context_template_length_params
        pairs = isinstance(params, (list, tuple)) and all(
            isinstance(p, (list, tuple)) and len(p) == 2 and all(_is_int(x) and x >= 1 for x in p) for p in params
        )
        if not pairs:
            self._fail("context_template_length_params", params, "a list of [length, count] pairs of positive integers")
        object.__setattr__(self, "context_template_length_params", tuple((int(a), int(b)) for a, b in params))
        self._check_rules({n: _bool for n in ("enable_prompt_keys", "enable_random_prefix_keys", "original_implementation")})
        if len(self.layers) != 1:
            raise HyperParamsError(f"ROME edits one layer, got layers={list(self.layers)}")
        if self.enable_prompt_keys and self.enable_random_prefix_keys:
            raise HyperParamsError("enable_prompt_keys and enable_random_prefix_keys cannot both be true")

    @property
    def key_variant(self) -> str:
        """Which keys the update uses: ``"rome"`` (the original: averaged key in u, bare-prompt key
        and output in v), ``"random_prefix"`` (r-ROME: template-averaged key and output in both) or
        ``"prompt"`` (bare-prompt key everywhere, target = current output + δ)."""
        if self.enable_random_prefix_keys:
            return "random_prefix"
        if self.enable_prompt_keys:
            return "prompt"
        return "rome"


@dataclass(frozen=True)
class RROMEHyperParams(ROMEHyperParams):
    """r-ROME ("Rebuilding ROME", Gupta et al. 2024): ROME with the key handling that removes the
    model-disabling edits. Same files as ROME; these defaults are r-ROME's."""

    METHOD: ClassVar[str] = "r-rome"
    PRESET_FOLDER: ClassVar[str] = "ROME"

    enable_prompt_keys: bool = False
    enable_random_prefix_keys: bool = True
    original_implementation: bool = True


@dataclass(frozen=True)
class MEMITHyperParams(HyperParams):
    """MEMIT (Meng et al. 2023), as in kmeng01/memit (and AlphaEdit's MEMIT files)."""

    METHOD: ClassVar[str] = "memit"
    PRESET_FOLDER: ClassVar[str] = "MEMIT"

    clamp_norm_factor: float = 0.75
    mom2_update_weight: float = 15000.0
    layer_selection: str = "all"

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check_rules({"mom2_update_weight": _real(0, False), "layer_selection": _choice(("all", "random"))})
        if self.fact_token == "last":
            raise HyperParamsError("MEMIT does not support fact_token='last' (the reference refuses it too)")
        if list(self.layers) != sorted(set(self.layers)):
            raise HyperParamsError(f"MEMIT layers must be increasing and distinct, got {list(self.layers)}")


def hparams_class(method: str) -> type[HyperParams]:
    """The hyperparameter class of the registered method ``method``."""
    from .methods.registry import UnknownMethodError, get_method

    try:
        return get_method(method).hparams_class
    except UnknownMethodError as e:
        raise HyperParamsError(str(e)) from None


def load_hparams(method: str, spec: "str | Path | Mapping[str, Any] | HyperParams") -> HyperParams:
    """Hyperparameters for ``method`` from a preset name, a JSON or YAML path (EasyEdit's files), a
    dict or an instance."""
    cls = hparams_class(method)
    if isinstance(spec, HyperParams):
        if not isinstance(spec, cls):
            raise HyperParamsError(f"method {method!r} needs {cls.__name__}, got {type(spec).__name__}")
        return spec
    if isinstance(spec, Mapping):
        return cls.from_dict(spec)
    path = Path(spec)
    if path.suffix.lower() in YAML_SUFFIXES + (".json",) or path.exists():
        return cls.from_file(path)
    return cls.preset(str(spec))


YAML_SUFFIXES = (".yaml", ".yml")


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        raise HyperParamsError(f"hyperparameter file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise HyperParamsError(f"{path}: cannot be read ({e})") from e


# Where each preset's numbers come from (shown by `fastedit presets` and in the README).
PRESET_SOURCES: dict[tuple[str, str], str] = {
    ("ROME", "gpt2-xl"): "kmeng01/rome hparams/ROME/gpt2-xl.json",
    ("ROME", "gpt-j-6b"): "kmeng01/rome hparams/ROME/EleutherAI_gpt-j-6B.json",
    ("ROME", "llama-3-8b"): "jianghoucheng/AlphaEdit hparams/ROME/Llama3-8B.json (concat subject index, BOS stripped from targets)",
    ("ROME", "smollm2-135m"): "fastedit: derived for SmolLM2-135M (README, 'SmolLM2 presets')",
    ("MEMIT", "gpt2-xl"): "kmeng01/memit hparams/MEMIT/gpt2-xl.json",
    ("MEMIT", "gpt-j-6b"): "kmeng01/memit hparams/MEMIT/EleutherAI_gpt-j-6B.json",
    ("MEMIT", "llama-3-8b"): "jianghoucheng/AlphaEdit hparams/MEMIT/Llama3-8B.json (concat subject index, BOS stripped from targets)",
    ("MEMIT", "smollm2-135m"): "fastedit: derived for SmolLM2-135M (README, 'SmolLM2 presets')",
    # EMMETHyperParams defaults to EMMET's concat subject index and BOS-stripped targets
    ("EMMET", "gpt2-xl"): "scalable-model-editing/unified-model-editing hparams/EMMET/gpt2-xl.json",
    ("EMMET", "gpt-j-6b"): "scalable-model-editing/unified-model-editing hparams/EMMET/EleutherAI_gpt-j-6B.json",
    ("EMMET", "llama-2-7b"): "scalable-model-editing/unified-model-editing hparams/EMMET/llama2-7b.json (its "
                             "compute_z also drops the second target token for Llama-2, the lone '▁'; fastedit "
                             "drops the BOS only)",
    ("EMMET", "smollm2-135m"): "fastedit: derived for SmolLM2-135M: layer 4 of 30 (as GPT-J's 5 of 28), v_loss_layer "
                               "29, the optimisation settings of EMMET's GPT-J file; mom2_update_weight Llama-2-7B's 1 "
                               "scaled by d_ff (1 · 1536 / 11008 = 0.14), keeping emmet_lambda's weight against "
                               "D = KᵀC⁻¹K (which grows with d_ff) as in Llama-2-7B",
    ("ENCORE", "gpt2-xl"): "scalable-model-editing/knowledge-editing-regularization hparams/ENCORE/gpt2-xl.json",
    ("ENCORE", "llama-2-7b"): "scalable-model-editing/knowledge-editing-regularization hparams/ENCORE/llama2-7b.json",
    ("ENCORE", "llama-3-8b"): "scalable-model-editing/knowledge-editing-regularization hparams/ENCORE/llama3-8b.json",
    ("ENCORE", "smollm2-135m"): (
        "fastedit: derived from ENCORE's llama3-8b.json for SmolLM2-135M (d_ff 1536 against 14336): λ_p 15000 and "
        "λ_n 20 scaled by d_ff to 1607 and 2.14 (λ_n/λ_p kept), v_loss_layer 29 (the last layer), the MEMIT "
        "preset's 100,000 statistics samples (one statistics file for both); not tuned"
    ),
    ("AlphaEdit", "gpt2-xl"): "jianghoucheng/AlphaEdit hparams/AlphaEdit/gpt2-xl.json (concat subject index, BOS stripped from targets, as its code does)",
    ("AlphaEdit", "gpt-j-6b"): "jianghoucheng/AlphaEdit hparams/AlphaEdit/EleutherAI_gpt-j-6B.json (concat subject index, BOS stripped from targets, as its code does)",
    ("AlphaEdit", "llama-3-8b"): "jianghoucheng/AlphaEdit hparams/AlphaEdit/Llama3-8B.json (concat subject index, BOS stripped from targets, as its code does)",
    ("AlphaEdit", "smollm2-135m"): "fastedit: MEMIT's SmolLM2-135M preset with AlphaEdit's threshold 2e-2 and L2 10 (README, 'SmolLM2 presets')",
}
