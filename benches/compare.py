#!/usr/bin/env python3
"""End-to-end speed comparison of smq against llama.cpp and ik_llama.cpp.

Builds both reference runtimes from their package-registry source distributions
(cached outside the repository), builds smq in release, imports the real models
once, then measures every runtime on the same machine, alternating runtimes inside
each round so that machine noise spreads evenly:

  pp128, pp512, tg64   tokens/s (one repetition per round; rounds give the spread)
  ttft                 wall time of a process that loads the model, evaluates a
                       ~32-token prompt, generates exactly 1 token and exits
  peak RSS             ru_maxrss of a generation-only run (os.wait4)
  bandwidth ceiling    2-thread read bandwidth / weight bytes read per token

  python3 benches/compare.py [--rounds 3] [--threads 2] [--out target/compare.json]
                             [--models smollm2,gemma3] [--skip-build] [--isa avx2]

--isa avx2 measures every runtime as it would run on a CPU with AVX2 but without
AVX-512 and AVX-VNNI (an AMD Zen 3, say): the anchors are built with those extensions
switched off (a separate cached build) and smq runs with SMQ_KERNEL_PATH=avx2.

Environment: SMQ_ANCHORS_DIR (default ~/.cache/smq-anchors) holds the anchor builds;
CARGO_TARGET_DIR is honoured for the smq build. Standard library only.
"""

import argparse
import contextlib
import datetime
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The two models of scripts/fetch-models.sh, by short name.
MODELS = {
    "smollm2": "SmolLM2-135M-Instruct.Q4_1.gguf",
    "gemma3": "gemma-3-270m-q4_k_m.gguf",
}

# AMX tile instructions fault (SIGILL in ggml's AMX matmul) on this class of VM even
# though /proc/cpuinfo lists amx_*; the guest is not granted the tile state. GCC lets
# an explicit -mno-* win over a later -march=native, so these keep the build native in
# every other respect (AVX-512, VNNI, BF16, tuning). Harmless on CPUs without AMX.
NO_AMX = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"

# --isa avx2: also no AVX-512 (every AVX-512 subset depends on avx512f) and no 256-bit
# VNNI (ggml uses it in its AVX2 dot products when the compiler may).
NO_AVX512 = "-mno-avx512f -mno-avxvnni"

# Instruction-set limits: (extra compiler flags for the anchors, smq's kernel path).
ISAS = {
    "native": ("", None),
    "avx2": (NO_AVX512, "avx2"),
}


def common_cmake_flags(isa):
    cflags = " ".join(f for f in (NO_AMX, ISAS[isa][0]) if f)
    return [
        "-DCMAKE_BUILD_TYPE=Release",
        "-DGGML_NATIVE=ON",
        "-DCMAKE_C_FLAGS=" + cflags,
        "-DCMAKE_CXX_FLAGS=" + cflags,
        "-DLLAMA_CURL=OFF",
        "-DLLAMA_BUILD_TESTS=OFF",
        "-DLLAMA_BUILD_SERVER=OFF",
    ]


ANCHORS = {
    "llama.cpp": {
        "package": "llama-cpp-python",
        "version": "0.3.36",
        "vendor": "vendor/llama.cpp",
        # llama-simple takes no thread count, so the completion tool measures ttft.
        "ttft_tool": "llama-completion",
        # Conversation mode is on by default when the model has a chat template.
        "ttft_args": ["-no-cnv", "--no-warmup"],
        "targets": ["llama-bench", "llama-completion"],
        "extra_cmake": ["-DLLAMA_OPENSSL=OFF"],
    },
    "ik_llama.cpp": {
        "package": "ik-llama-cpp-python",
        "version": "0.1.5",
        "vendor": "vendor/ik_llama.cpp",
        "ttft_tool": "llama-cli",
        # This llama-cli runs without conversation mode unless -cnv is given.
        "ttft_args": ["--no-warmup"],
        "targets": ["llama-bench", "llama-cli"],
        "extra_cmake": [],
    },
}

# Rotation inside each round: (runtime label, anchor, llama-bench args, llama-cli args).
# ik_llama.cpp's llama-bench takes "-rtr 0|1", its llama-cli a bare "-rtr" switch.
RUNTIMES = [
    ("smq", None, [], []),
    ("llama.cpp", "llama.cpp", [], []),
    ("ik_llama.cpp -rtr 0", "ik_llama.cpp", ["-rtr", "0"], []),
    ("ik_llama.cpp -rtr 1", "ik_llama.cpp", ["-rtr", "1"], ["-rtr"]),
]

# Plain English; 32 tokens with SmolLM2's tokenizer (no BOS), 33 with Gemma 3's (BOS)
# (the exact counts are measured and recorded in the JSON).
TTFT_PROMPT = (
    "The old lighthouse keeper climbed the winding stairs every evening, carrying a "
    "small lamp and a notebook in which he wrote down the names of the ships he saw "
    "at sea"
)
TTFT_CTX = 4096  # smq's default context cap; every runtime gets the same
RSS_GEN = 16


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def run(cmd, cwd=None, env=None, timeout=None, check=True):
    """Runs a command, returns CompletedProcess with text output."""
    p = subprocess.run(
        cmd, cwd=cwd, env=env, timeout=timeout, capture_output=True, text=True
    )
    if check and p.returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd)} failed (exit {p.returncode}):\n{tail(p.stderr or p.stdout)}"
        )
    return p


def tail(text, lines=15):
    return "\n".join(text.strip().splitlines()[-lines:])


def describe_exit(code):
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit {code}"


# ---------------------------------------------------------------- anchor builds


def anchors_dir():
    return os.path.expanduser(
        os.environ.get("SMQ_ANCHORS_DIR", "~/.cache/smq-anchors")
    )


def ensure_cmake():
    if shutil.which("cmake"):
        p = run(["cmake", "--version"], check=False)
        if p.returncode == 0:
            return "cmake"
    log("cmake not found; installing it with pip --user")
    run([sys.executable, "-m", "pip", "install", "--user", "--quiet", "cmake"])
    user_bin = os.path.join(
        run([sys.executable, "-m", "site", "--user-base"]).stdout.strip(), "bin"
    )
    cmake = os.path.join(user_bin, "cmake")
    if not os.path.exists(cmake):
        raise RuntimeError("pip installed cmake but no cmake binary was found")
    return cmake


def fetch_source(name, spec, root):
    """Downloads and extracts the sdist once; returns the vendored C++ tree."""
    src_root = os.path.join(root, f"{name}-{spec['version']}", "src")
    tree = None
    if os.path.isdir(src_root):
        for entry in os.listdir(src_root):
            candidate = os.path.join(src_root, entry, spec["vendor"])
            if os.path.isdir(candidate):
                tree = candidate
    if tree:
        return tree
    dl = os.path.join(root, "dl")
    os.makedirs(dl, exist_ok=True)
    pattern = spec["package"].replace("-", "_") + "-" + spec["version"] + ".tar.gz"
    archive = os.path.join(dl, pattern)
    if not os.path.exists(archive):
        log(f"[{name}] downloading {spec['package']}=={spec['version']} sdist")
        # --no-binary for this package only: ':all:' would build cmake from source.
        run(
            [
                sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                "--disable-pip-version-check",
                "--no-binary", spec["package"],
                f"{spec['package']}=={spec['version']}", "-d", dl,
            ]
        )
    if not os.path.exists(archive):
        raise RuntimeError(f"pip download did not produce {archive}")
    tmp = src_root + ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    with tarfile.open(archive) as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(tmp, filter="data")
        else:
            tar.extractall(tmp)
    shutil.rmtree(src_root, ignore_errors=True)
    os.rename(tmp, src_root)
    return fetch_source(name, spec, root)


def write_build_info(tree):
    """ik_llama.cpp's sdist lacks the script that generates common/build-info.cpp."""
    out = os.path.join(tree, "common", "build-info.cpp")
    template = out + ".in"
    if os.path.exists(out) or not os.path.exists(template):
        return
    text = open(template).read()
    for key, value in {
        "@BUILD_NUMBER@": "0",
        "@BUILD_COMMIT@": "sdist",
        "@BUILD_COMPILER@": "cc",
        "@BUILD_TARGET@": platform.machine() + "-linux",
    }.items():
        text = text.replace(key, value)
    with open(out, "w") as f:
        f.write(text)


def anchor_cmake_flags(spec, isa):
    return common_cmake_flags(isa) + spec["extra_cmake"]


def build_anchor(name, spec, isa, skip_build):
    """Returns {'bin': dir, 'cmake_flags': [...]} or raises with the reason."""
    root = anchors_dir()
    flags = anchor_cmake_flags(spec, isa)
    # Each instruction-set limit has its own build tree, so switching costs no rebuild.
    suffix = "" if isa == "native" else f"-{isa}"
    build = os.path.join(root, f"{name}-{spec['version']}", "build" + suffix)
    stamp_path = os.path.join(build, "smq-compare-stamp.json")
    stamp = {"cmake_flags": flags, "targets": spec["targets"]}
    bindir = os.path.join(build, "bin")
    have = all(os.path.exists(os.path.join(bindir, t)) for t in spec["targets"])
    if have and os.path.exists(stamp_path):
        with open(stamp_path) as f:
            if json.load(f) == stamp:
                return {"bin": bindir, "cmake_flags": flags, "cached": True}
    if skip_build:
        raise RuntimeError(f"--skip-build given but no cached build in {build}")
    cmake = ensure_cmake()
    tree = fetch_source(name, spec, root)
    write_build_info(tree)
    os.makedirs(build, exist_ok=True)
    log(f"[{name}] configuring: {' '.join(flags)}")
    run([cmake, "-S", tree, "-B", build] + flags)
    log(f"[{name}] building {', '.join(spec['targets'])} (-j2; takes a while)")
    run(
        [cmake, "--build", build, "--config", "Release", "-j2", "--target"]
        + spec["targets"]
    )
    with open(stamp_path, "w") as f:
        json.dump(stamp, f)
    return {"bin": bindir, "cmake_flags": flags, "cached": False}


# ---------------------------------------------------------------- smq and models


def cargo_target_dir():
    return os.environ.get("CARGO_TARGET_DIR") or os.path.join(REPO, "target")


def build_smq(skip_build):
    smq = os.path.join(cargo_target_dir(), "release", "smq")
    if not skip_build or not os.path.exists(smq):
        log("[smq] cargo build --release")
        run(["cargo", "build", "--release", "--quiet"], cwd=REPO)
    if not os.path.exists(smq):
        raise RuntimeError(f"no smq binary at {smq}")
    return smq


def fetch_models(names):
    p = run(["bash", os.path.join(REPO, "scripts", "fetch-models.sh")], cwd=REPO)
    models_dir = p.stdout.strip().splitlines()[-1]
    paths = {}
    for name in names:
        path = os.path.join(models_dir, MODELS[name])
        if not os.path.exists(path):
            raise RuntimeError(f"fetch-models.sh did not provide {path}")
        paths[name] = path
    return paths


def fresh_copies(ggufs, workdir):
    """Copies each GGUF into workdir with large writes, for the anchors to read.

    How a file entered the page cache changes how fast a mapping of it streams: on this
    project's Linux machines a file written in large writes sits in large page-cache
    folios and reads back about twice as fast (one thread) as one written in small
    pieces (an unzip, an older importer). smq reads the .smq it has just imported; the
    anchors get a copy written the same way, so both sides stream equally fast.
    """
    out = {}
    for name, gguf in ggufs.items():
        dest = os.path.join(workdir, os.path.basename(gguf))
        with open(gguf, "rb") as src, open(dest, "wb") as dst:
            while True:
                chunk = src.read(8 << 20)
                if not chunk:
                    break
                dst.write(chunk)
        out[name] = dest
    return out


def import_models(smq, ggufs, workdir):
    out = {}
    for name, gguf in ggufs.items():
        dest = os.path.join(workdir, name + ".smq")
        log(f"[smq] import {os.path.basename(gguf)}")
        run([smq, "import", gguf, "-o", dest, "--force"])
        out[name] = dest
    return out


def prompt_tokens(smq, gguf):
    """Tokens of the ttft prompt (BOS included when the model adds one)."""
    p = run([smq, "tokenize", "--direct", gguf, TTFT_PROMPT, "--json"], check=False)
    try:
        return len(json.loads(p.stdout)["ids"])
    except (ValueError, KeyError):
        return None


# ---------------------------------------------------------------- measurements


def timed(cmd, timeout=900):
    """Runs cmd; returns (wall seconds, exit code, max RSS MB, stdout, stderr)."""
    out = tempfile.TemporaryFile()
    err = tempfile.TemporaryFile()
    start = time.perf_counter()
    # A scratch working directory: some anchor tools write log files (main.log) there.
    proc = subprocess.Popen(
        cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=tempfile.gettempdir()
    )
    # A blocking wait4 keeps the timing exact; a timer kills a hung process.
    killer = threading.Timer(timeout, proc.kill)
    killer.start()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    killer.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)
    out.seek(0)
    err.seek(0)
    return (
        wall,
        proc.returncode,
        usage.ru_maxrss / 1024.0,  # Linux reports KiB
        out.read().decode(errors="replace"),
        err.read().decode(errors="replace"),
    )


def checked(cmd, what):
    wall, code, rss, out, err = timed(cmd)
    if code != 0:
        raise RuntimeError(f"{what}: {describe_exit(code)}: {tail(err or out, 6)}")
    return wall, rss, out


def llama_bench_speed(binary, gguf, threads, extra):
    cmd = [binary, "-m", gguf, "-t", str(threads), "-p", "128,512", "-n", "64",
           "-r", "1", "-o", "json"] + extra
    _, _, out = checked(cmd, "llama-bench")
    rows = json.loads(out[out.index("["):])
    result = {}
    for row in rows:
        if row["n_gen"] == 0:
            result[f"pp{row['n_prompt']}"] = row["avg_ts"]
        elif row["n_prompt"] == 0:
            result[f"tg{row['n_gen']}"] = row["avg_ts"]
    return result


def smq_bench_json(smq, model, threads, n_prompt, n_gen):
    cmd = [smq, "bench", model, "-t", str(threads), "-p", str(n_prompt),
           "-n", str(n_gen), "-r", "1", "--json"]
    _, rss, out = checked(cmd, "smq bench")
    return json.loads(out), rss


def smq_speed(smq, model, threads):
    a, _ = smq_bench_json(smq, model, threads, 128, 64)
    b, _ = smq_bench_json(smq, model, threads, 512, 64)
    info = {"kernel_path": a.get("kernel_path"), "cpu": a.get("cpu")}
    # tg64 comes from both runs; the first one is reported, the second is kept.
    return {"pp128": a["pp_tok_s"], "pp512": b["pp_tok_s"], "tg64": a["tg_tok_s"],
            "tg64_second": b["tg_tok_s"]}, info


def ttft_cmd(label, binaries, model, threads, extra):
    if label == "smq":
        return [binaries["smq"], "run", model, "-t", str(threads), "--ctx", str(TTFT_CTX),
                "-p", TTFT_PROMPT, "-n", "1", "--temp", "0"]
    tool = binaries[label]["ttft"]
    return [tool, "-m", model, "-t", str(threads), "-c", str(TTFT_CTX), "-n", "1",
            "--temp", "0", "-p", TTFT_PROMPT] + ANCHORS[label]["ttft_args"] + extra


def rss_cmd(label, binaries, model, threads, extra):
    if label == "smq":
        # smq bench needs -p >= 1; its context is max(p, n+1, 32) = 32 tokens.
        return [binaries["smq"], "bench", model, "-t", str(threads), "-p", "1",
                "-n", str(RSS_GEN), "-r", "1"]
    # llama-bench sizes the context to n_prompt + n_gen = 16 tokens.
    return [binaries[label]["bench"], "-m", model, "-t", str(threads), "-p", "0",
            "-n", str(RSS_GEN), "-r", "1"] + extra


def write_probe(path, nbytes):
    """Seconds to write nbytes in 8 MB writes and fsync them: what this disk allows."""
    chunk = b"\x5a" * (8 << 20)
    start = time.perf_counter()
    with open(path, "wb") as f:
        left = nbytes
        while left > 0:
            left -= f.write(chunk[:min(left, len(chunk))])
        f.flush()
        os.fsync(f.fileno())
    return time.perf_counter() - start


@contextlib.contextmanager
def normal_scheduling():
    """Runs the block, and the processes it starts, under the normal scheduling policy.

    Under a realtime policy (a `chrt -f` around this script keeps other jobs off the
    benchmarks) the import's busy threads would starve the kernel threads that write its
    output back to the disk: that measures the policy, not the import.
    """
    try:
        policy, param = os.sched_getscheduler(0), os.sched_getparam(0)
    except (AttributeError, OSError):
        policy = None
    if policy is None or policy == os.SCHED_OTHER:
        yield
        return
    os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    try:
        yield
    finally:
        os.sched_setscheduler(0, policy, param)


def import_speed(smq, gguf, workdir):
    """smq import of a GGUF already in the page cache, beside a plain write of the same
    size: GB/s of the source read, and GB/s the disk took for the output alone.

    The import ends with an fsync (its output is durable before it is renamed into
    place), so on a slow disk the write bounds it; the probe shows that bound.
    """
    warm_page_cache(gguf)
    dest = os.path.join(workdir, "import-probe.smq")
    probe = os.path.join(workdir, "write-probe.bin")
    # Each timed write starts with no earlier write-back or deletion still in flight.
    for path in (dest, probe):
        if os.path.exists(path):
            os.remove(path)
    os.sync()
    with normal_scheduling():
        # The first large write after a pause runs at a fraction of the disk's speed on
        # the VMs measured (0.4 against 1.4 GB/s, whichever write it is), and the import
        # starts each round after minutes of benchmarks: an untimed write first, so that
        # both timed writes below follow a write.
        write_probe(probe, os.path.getsize(gguf))
        os.remove(probe)
        os.sync()
        wall, _, _ = checked([smq, "import", gguf, "-o", dest, "--force"], "smq import")
        written = os.path.getsize(dest)
        os.remove(dest)
        os.sync()
        disk = write_probe(probe, written)
        os.remove(probe)
        os.sync()
    return {"import_gb_s": os.path.getsize(gguf) / wall / 1e9,
            "write_gb_s": written / disk / 1e9, "source_mb": os.path.getsize(gguf) / 1e6,
            "written_mb": written / 1e6}


def warm_page_cache(path):
    with open(path, "rb") as f:
        while f.read(1 << 24):
            pass


def bandwidth_probe():
    """Runs benches/bandwidth.rs; returns its numbers (GB/s, weight MB per token)."""
    p = run(["cargo", "bench", "--quiet", "--bench", "bandwidth"], cwd=REPO,
            timeout=1800)
    text = p.stdout
    m = re.search(
        r"read bandwidth: ([\d.]+) GB/s \(1 thread\), ([\d.]+) GB/s \((\d+) threads\)",
        text)
    if not m:
        raise RuntimeError(f"unexpected bandwidth output:\n{tail(text)}")
    result = {"gbps_1": float(m.group(1)), "gbps_n": float(m.group(2)),
              "threads": int(m.group(3)), "weights_mb": {}}
    for name, file in MODELS.items():
        w = re.search(re.escape(file) + r": ([\d.]+) MB of weights per token", text)
        if w:
            result["weights_mb"][name] = float(w.group(1))
    return result


def busy_processes(limit=5):
    p = run(["ps", "-eo", "pcpu,comm", "--sort=-pcpu", "--no-headers"], check=False)
    rows = []
    for line in p.stdout.splitlines()[:limit]:
        parts = line.split(None, 1)
        if len(parts) == 2 and float(parts[0]) >= 5.0:
            rows.append(f"{parts[1]} {parts[0]}%")
    return rows


def cpu_flags():
    """The /proc/cpuinfo flags that decide which kernels each runtime can use."""
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_int8")
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    have = set(line.split(":", 1)[1].split())
                    return [w for w in wanted if w in have]
    except OSError:
        pass
    return []


def compiler_version():
    p = run(["c++", "--version"], check=False)
    return (p.stdout.splitlines() or ["unknown"])[0]


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


# ---------------------------------------------------------------- the run


METRICS = ["pp128", "pp512", "tg64", "ttft_ms", "peak_rss_mb"]


def summary(values):
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values),
            "max": max(values), "n": len(values), "all": values}


def measure_round(label, anchor, extra, cli_extra, binaries, smq_model, gguf,
                  threads):
    """One round of one runtime on one model: {metric: value} and {part: error}."""
    values, errors = {}, {}
    model = smq_model if label == "smq" else gguf
    try:
        if label == "smq":
            speed, info = smq_speed(binaries["smq"], model, threads)
            values["smq_info"] = info
        else:
            speed = llama_bench_speed(binaries[anchor]["bench"], model, threads, extra)
        values.update(speed)
    except Exception as e:  # noqa: BLE001 - recorded, the run goes on
        errors["speed"] = str(e)
    key = label if label == "smq" else anchor
    try:
        wall, _, _ = checked(ttft_cmd(key, binaries, model, threads, cli_extra),
                             "ttft run")
        values["ttft_ms"] = wall * 1000.0
    except Exception as e:  # noqa: BLE001
        errors["ttft"] = str(e)
    try:
        _, rss, _ = checked(rss_cmd(key, binaries, model, threads, extra), "rss run")
        values["peak_rss_mb"] = rss
    except Exception as e:  # noqa: BLE001
        errors["peak_rss"] = str(e)
    return values, errors


def fmt_cell(s, digits=1):
    if not s:
        return "-"
    med, lo, hi = s["median"], s["min"], s["max"]
    if s["n"] == 1:
        return f"{med:.{digits}f}"
    return f"{med:.{digits}f} ({lo:.{digits}f}-{hi:.{digits}f})"


def ratio(a, b):
    if not a or not b or not b["median"]:
        return None
    return a["median"] / b["median"]


LOWER_IS_BETTER = ("ttft_ms", "peak_rss_mb")


def ratio_best(a, b, metric):
    """smq's best round ÷ the anchor's best round: on a busy machine the best round is
    the one least disturbed by other jobs."""
    if not a or not b:
        return None
    pick = min if metric in LOWER_IS_BETTER else max
    return pick(a["all"]) / pick(b["all"]) if pick(b["all"]) else None


def best_ik(results, model, metric, key="median"):
    """The better of ik_llama.cpp -rtr 0 / -rtr 1 for one metric (by median)."""
    lower_better = metric in LOWER_IS_BETTER
    cands = [results[model].get(lbl, {}).get("summary", {}).get(metric)
             for lbl in ("ik_llama.cpp -rtr 0", "ik_llama.cpp -rtr 1")]
    cands = [c for c in cands if c]
    if not cands:
        return None
    if key == "median":
        value = lambda c: c["median"]  # noqa: E731
    else:  # the best round
        value = lambda c: min(c["all"]) if lower_better else max(c["all"])  # noqa: E731
    return min(cands, key=value) if lower_better else max(cands, key=value)


def render_table(report):
    lines = []
    lines.append(f"cpu: {report['cpu']} ({os.cpu_count()} CPUs; "
                 f"{' '.join(report['cpu_flags'])})")
    if report.get("isa", "native") != "native":
        lines.append(f"instruction sets limited to {report['isa']}: anchors built with "
                     f"{ISAS[report['isa']][0]}, smq SMQ_KERNEL_PATH={ISAS[report['isa']][1]}")
    lines.append(
        f"smq kernel path: {report.get('smq_kernel_path') or '?'} | threads: "
        f"{report['threads']} | rounds: {report['rounds']} | values: median (min-max)")
    bw = report.get("bandwidth")
    if bw and "gbps_n" in bw:
        lines.append(
            f"read bandwidth: {bw['gbps_1']:.1f} GB/s (1 thread), {bw['gbps_n']:.1f} GB/s "
            f"({bw['threads']} threads; median of {len(bw.get('rounds', [])) or 1})")
    loads = ", ".join(f"{x:.2f}" for x in report["load_before_round"])
    lines.append(f"1-min load before each round: {loads}")
    head = f"{'runtime':<20} {'pp128 tok/s':>22} {'pp512 tok/s':>22} {'tg64 tok/s':>22} " \
           f"{'ttft ms':>8} {'RSS MB':>7} {'tg/ceil':>7}"
    for name, per_rt in report["results"].items():
        ceiling = report["ceilings_tok_s"].get(name)
        ceil_txt = f"{ceiling:.0f} tok/s" if ceiling else "n/a"
        lines.append("")
        lines.append(f"== {name} ({report['models'][name]['file']}, ttft prompt "
                     f"{report['models'][name].get('ttft_prompt_tokens')} tokens, "
                     f"decode ceiling {ceil_txt})")
        lines.append(head)
        for label, r in per_rt.items():
            s = r["summary"]
            tg = s.get("tg64")
            pct = f"{100 * tg['median'] / ceiling:.0f}%" if tg and ceiling else "-"
            ttft = f"{s['ttft_ms']['median']:.0f}" if s.get("ttft_ms") else "-"
            rss = f"{s['peak_rss_mb']['median']:.0f}" if s.get("peak_rss_mb") else "-"
            lines.append(
                f"{label:<20} {fmt_cell(s.get('pp128')):>22} {fmt_cell(s.get('pp512')):>22} "
                f"{fmt_cell(s.get('tg64')):>22} {ttft:>8} {rss:>7} {pct:>7}")
            for err in r["errors"]:
                lines.append(f"    FAILED {err}")
        imp = report.get("import", {}).get(name)
        if imp:
            lines.append(
                f"smq import: {fmt_cell(imp['import_gb_s'], 2)} GB/s of the "
                f"{imp['source_mb']:.0f} MB source (page cache), {imp['written_mb']:.0f} MB "
                f"written and fsynced; the same write alone: "
                f"{fmt_cell(imp['write_gb_s'], 2)} GB/s")
        for kind, what in (("ratios", "medians"), ("ratios_best_round", "best rounds")):
            for anchor_label, rr in report[kind][name].items():
                parts = []
                for m in METRICS:
                    v = rr.get(m)
                    parts.append(f"{m} {v:.2f}x" if v else f"{m} -")
                lines.append(f"smq/{anchor_label} ({what}): " + ", ".join(parts))
    lines.append("")
    lines.append("ratios are smq ÷ anchor: >1 is faster for tok/s, <1 is better for ttft "
                 "and RSS; ik_llama = the better of -rtr 0/1 per metric; 'best rounds' "
                 "compares each side's best round (max tok/s, min ms/MB), the least "
                 "disturbed one on a busy machine")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None,
                    help="JSON report (default: <cargo target dir>/compare.json)")
    ap.add_argument("--models", default="smollm2,gemma3")
    ap.add_argument("--anchors", default=",".join(ANCHORS),
                    help="which reference runtimes to build and run")
    ap.add_argument("--skip-build", action="store_true",
                    help="use the cached anchor builds and the existing smq binary")
    ap.add_argument("--isa", choices=list(ISAS), default="native",
                    help="avx2: every runtime limited to AVX2 (no AVX-512, no AVX-VNNI), "
                         "as on a CPU without them")
    args = ap.parse_args()
    kernel_path = ISAS[args.isa][1]
    if kernel_path:
        # Inherited by every smq process of the run (bench, run, import).
        os.environ["SMQ_KERNEL_PATH"] = kernel_path
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in names if m not in MODELS]
    if unknown or not names or args.rounds < 1 or args.threads < 1:
        ap.error(f"--models takes a list of {', '.join(MODELS)}; rounds/threads >= 1")
    selected = [a.strip() for a in args.anchors.split(",") if a.strip()]
    if any(a not in ANCHORS for a in selected):
        ap.error(f"--anchors takes a list of {', '.join(ANCHORS)}")
    runtimes = [r for r in RUNTIMES if r[1] is None or r[1] in selected]
    out_path = args.out or os.path.join(cargo_target_dir(), "compare.json")

    report = {
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "compiler": compiler_version(),
        "threads": args.threads,
        "rounds": args.rounds,
        "isa": args.isa,
        "anchors": {},
        "method": {
            "speed": "anchors: llama-bench -p 128,512 -n 64 -r 1 -o json (plus -rtr 0|1 "
                     "for ik_llama.cpp); smq: smq bench -p 128 -n 64 -r 1 --json and "
                     "-p 512; both warm up with one untimed prompt of the same length and "
                     "one generated token (their default); one repetition per round, "
                     "runtimes alternate in each round",
            "import": "smq import of the GGUF (page cache) to a new file, GB/s of the "
                      "source; beside it a plain 8 MB-write + fsync of the same size; "
                      "both after an untimed write of that size (a first write after a "
                      "pause is slow on the VMs measured)",
            "ttft": "wall time from spawning a process to its exit; it loads the model "
                    "(file already in the page cache), evaluates the prompt below, "
                    "generates exactly 1 token (greedy) and exits; context "
                    f"{TTFT_CTX} for all; llama.cpp: llama-completion -no-cnv "
                    "--no-warmup; ik_llama.cpp: llama-cli --no-warmup (its default is "
                    "no conversation mode), plus -rtr for the -rtr 1 row; smq: smq run "
                    "--temp 0 on the imported .smq",
            "ttft_prompt": TTFT_PROMPT,
            "peak_rss": f"ru_maxrss (os.wait4) of a generation-only run: llama-bench "
                        f"-p 0 -n {RSS_GEN} -r 1 (context {RSS_GEN} tokens); smq bench "
                        f"-p 1 -n {RSS_GEN} -r 1 (context 32 tokens, the least it "
                        "allows); mmap'd weights count once touched",
            "bandwidth": "cargo bench --bench bandwidth once per round; ceiling tok/s = "
                         "N-thread read bandwidth (median over rounds) / weight bytes "
                         "read per generated token",
        },
        "errors": [],
    }
    binaries = {}

    for name, spec in ANCHORS.items():
        if name not in selected:
            continue
        entry = {"package": f"{spec['package']}=={spec['version']}",
                 "cmake_flags": anchor_cmake_flags(spec, args.isa),
                 "targets": spec["targets"]}
        try:
            built = build_anchor(name, spec, args.isa, args.skip_build)
            entry.update(built)
            binaries[name] = {"bench": os.path.join(built["bin"], "llama-bench"),
                              "ttft": os.path.join(built["bin"], spec["ttft_tool"])}
        except Exception as e:  # noqa: BLE001 - reported, the other runtimes still run
            entry["error"] = str(e)
            log(f"[{name}] BUILD FAILED, its rows will be empty:\n{e}")
        report["anchors"][name] = entry

    binaries["smq"] = build_smq(args.skip_build)
    ggufs = fetch_models(names)
    workdir = tempfile.mkdtemp(prefix="smq-compare-")
    try:
        smqs = import_models(binaries["smq"], ggufs, workdir)
        ggufs = fresh_copies(ggufs, workdir)
        report["models"] = {
            n: {"file": os.path.basename(ggufs[n]),
                "ttft_prompt_tokens": prompt_tokens(binaries["smq"], ggufs[n])}
            for n in names}
        raw = {n: {lbl: [] for lbl, *_ in runtimes} for n in names}
        errors = {n: {lbl: [] for lbl, *_ in runtimes} for n in names}
        for lbl, anchor, *_ in runtimes:
            if anchor and anchor not in binaries:
                for n in names:
                    errors[n][lbl].append(
                        f"{anchor} did not build: {report['anchors'][anchor]['error'][:300]}")
        report["load_before_round"] = []
        bandwidth_rounds = []
        import_rounds = {n: [] for n in names}
        for rnd in range(args.rounds):
            load1 = os.getloadavg()[0]
            report["load_before_round"].append(load1)
            if load1 > 0.5 * (os.cpu_count() or 1):
                busy = ", ".join(busy_processes()) or "none visible now"
                log(f"WARNING: 1-min load {load1:.2f} on {os.cpu_count()} CPUs before "
                    f"round {rnd + 1}; other jobs are running ({busy}); numbers are noisy")
            for n in names:
                try:
                    import_rounds[n].append(import_speed(binaries["smq"], ggufs[n], workdir))
                except Exception as e:  # noqa: BLE001
                    report["errors"].append(f"import of {n}, round {rnd + 1}: {e}")
            try:
                bandwidth_rounds.append(bandwidth_probe())
            except Exception as e:  # noqa: BLE001
                report["errors"].append(f"bandwidth probe, round {rnd + 1}: {e}")
                log(f"bandwidth probe failed: {e}")
            for n in names:
                warm_page_cache(ggufs[n])
                warm_page_cache(smqs[n])
                for lbl, anchor, extra, cli_extra in runtimes:
                    if anchor and anchor not in binaries:
                        continue
                    log(f"round {rnd + 1}/{args.rounds}: {n} / {lbl}")
                    values, errs = measure_round(
                        lbl, anchor, extra, cli_extra, binaries, smqs[n], ggufs[n],
                        args.threads)
                    raw[n][lbl].append(values)
                    for part, msg in errs.items():
                        text = f"round {rnd + 1} {part}: {msg}"
                        errors[n][lbl].append(text)
                        log(f"  FAILED {text}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    if bandwidth_rounds:
        bw = dict(bandwidth_rounds[-1])
        bw["gbps_1"] = statistics.median(b["gbps_1"] for b in bandwidth_rounds)
        bw["gbps_n"] = statistics.median(b["gbps_n"] for b in bandwidth_rounds)
        bw["rounds"] = [{"gbps_1": b["gbps_1"], "gbps_n": b["gbps_n"]}
                        for b in bandwidth_rounds]
        if bw["threads"] != args.threads:
            report["errors"].append(
                f"the bandwidth probe used {bw['threads']} threads, the runs "
                f"{args.threads}; the ceiling is for {bw['threads']} threads")
        report["bandwidth"] = bw
    report["import"] = {}
    for n, rounds in import_rounds.items():
        if rounds:
            report["import"][n] = {
                "source_mb": rounds[0]["source_mb"], "written_mb": rounds[0]["written_mb"],
                "import_gb_s": summary([r["import_gb_s"] for r in rounds]),
                "write_gb_s": summary([r["write_gb_s"] for r in rounds])}
    report["ceilings_tok_s"] = {}
    for n in names:
        mb = report.get("bandwidth", {}).get("weights_mb", {}).get(n)
        if mb:
            report["ceilings_tok_s"][n] = report["bandwidth"]["gbps_n"] * 1e3 / mb

    report["results"] = {}
    report["ratios"] = {}
    for n in names:
        report["results"][n] = {}
        for lbl, *_ in runtimes:
            rounds = raw[n][lbl]
            summ = {m: summary([r[m] for r in rounds if m in r]) for m in METRICS}
            report["results"][n][lbl] = {
                "summary": {m: s for m, s in summ.items() if s},
                "rounds": rounds,
                "errors": errors[n][lbl],
            }
            for r in rounds:
                info = r.get("smq_info")
                if info:
                    report["smq_kernel_path"] = info.get("kernel_path")
        smq_s = report["results"][n]["smq"]["summary"]
        llama_s = report["results"][n].get("llama.cpp", {}).get("summary", {})
        report["ratios"][n] = {}
        report["ratios_best_round"] = report.get("ratios_best_round", {})
        report["ratios_best_round"][n] = {}
        if "llama.cpp" in selected:
            report["ratios"][n]["llama.cpp"] = {
                m: ratio(smq_s.get(m), llama_s.get(m)) for m in METRICS}
            report["ratios_best_round"][n]["llama.cpp"] = {
                m: ratio_best(smq_s.get(m), llama_s.get(m), m) for m in METRICS}
        if "ik_llama.cpp" in selected:
            report["ratios"][n]["ik_llama"] = {
                m: ratio(smq_s.get(m), best_ik(report["results"], n, m))
                for m in METRICS}
            report["ratios_best_round"][n]["ik_llama"] = {
                m: ratio_best(smq_s.get(m), best_ik(report["results"], n, m, "best"), m)
                for m in METRICS}
        ceiling = report["ceilings_tok_s"].get(n)
        for lbl in report["results"][n]:
            tg = report["results"][n][lbl]["summary"].get("tg64")
            if tg and ceiling:
                report["results"][n][lbl]["tg64_pct_of_ceiling"] = \
                    100 * tg["median"] / ceiling

    table = render_table(report)
    report["table"] = table
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    with open(out_path, "w") as f:
        json.dump(report, f, indent=1)
    print(table)
    for e in report["errors"]:
        print(f"note: {e}")
    failed = [f"{n}/{lbl}" for n in names for lbl in errors[n] if errors[n][lbl]]
    if failed:
        print(f"FAILURES in: {', '.join(failed)} (details above and in the JSON)")
    print(f"wrote {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
