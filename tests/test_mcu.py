"""Cortex-M microcontroller targets: the generated C runtime built bare-metal with
arm-none-eabi-gcc and run on QEMU's mps2-an386 (Cortex-M4) and mps2-an500 (Cortex-M7) boards
under semihosting, its flash and RAM read from the ELF."""
import json
import re
import shutil
import subprocess

import numpy as np
import pytest
import torch

from edgeprune.errors import UserError

from .conftest import requires_cc, requires_mcu, run_cli, skip_unless, small_ticket

T = 5


@pytest.fixture(scope="module")
def model_c(digits_model, tmp_path_factory):
    """The trained digits convnet's generated C sources, and its PyTorch logits on 48 test
    images."""
    from edgeprune import checkpoint, data
    from export.c_codegen import write_c
    from export.c_program import program_from_model

    spec, model = checkpoint.load(digits_model.file("model.pt"))
    model.eval()
    folder = tmp_path_factory.mktemp("mcu-c")
    summary = write_c(program_from_model(model, T, spec.input_shape), folder)
    x = data.load("digits").x_test[:48]
    with torch.no_grad():
        ref = model(x, T).sum(0).numpy()
    return folder, summary, x.numpy(), ref


@pytest.fixture(scope="module")
def firmware(model_c, tmp_path_factory):
    from targets import boards, mcu_build

    skip_unless(requires_mcu)
    out = tmp_path_factory.mktemp("mcu-build")
    return {name: mcu_build.build(model_c[0], out / name, boards.get(name))
            for name in ("mps2-an386", "mps2-an500")}


@requires_mcu
@pytest.mark.parametrize("board", ["mps2-an386", "mps2-an500"])
def test_firmware_on_the_board_matches_pytorch_and_native_c(model_c, firmware, board, tmp_path):
    from targets import boards, c_build, c_run, mcu_run, tools

    folder, summary, x, ref = model_c
    build = firmware[board]
    assert build.warnings == "", build.warnings
    out = mcu_run.run(build.elf, boards.get(board), x)
    assert out.logits.shape == ref.shape
    assert (out.logits.argmax(1) == ref.argmax(1)).all()
    assert float(np.abs(out.logits - ref).max()) < 1e-4
    assert out.info["images"] == len(x) and out.info["input_shape"] == [1, 8, 8]
    assert out.info["weight_bytes"] == summary["weight_bytes"]
    # stack: measured from the paint, inside its reserve, and more than nothing
    assert 64 < out.info["stack_peak_bytes"] < out.info["stack_bytes"] == build.stack_bytes
    # -icount shift=0: one SysTick tick per 40 instructions, so counts are multiples of 40
    assert len(out.instructions) == len(x) and all(n > 10_000 and n % 40 == 0
                                                    for n in out.instructions)
    assert "not indicative" in out.latency_note and board in out.latency_note
    if tools.CC.find():
        native = c_run.run(c_build.build(folder, tmp_path / "native"), x).logits
        # IEEE float32 with no fused multiply-add on both: the same bits
        assert np.array_equal(out.logits, native)


@requires_mcu
def test_icount_instructions_follow_the_work(model_c, firmware):
    """Instruction counts are QEMU's, not noise: the same image costs the same count on every
    run, and a blank image (no spikes to propagate) costs less than a digit."""
    from targets import boards, mcu_run

    x = model_c[2]
    board = boards.get("mps2-an386")
    a = mcu_run.run(firmware["mps2-an386"].elf, board, x[:4])
    b = mcu_run.run(firmware["mps2-an386"].elf, board, x[:4])
    assert a.instructions == b.instructions
    blank = mcu_run.run(firmware["mps2-an386"].elf, board, np.zeros_like(x[:1]))
    assert blank.instructions[0] < min(a.instructions)


@requires_mcu
def test_footprint_from_the_elf_matches_binutils(model_c, firmware):
    from targets import elf, mcu_build

    build = firmware["mps2-an386"]
    p = subprocess.run(["arm-none-eabi-size", "-A", str(build.elf)], capture_output=True,
                       text=True, check=True)
    theirs = {m[1]: int(m[2]) for m in re.finditer(r"^(\.\S+)\s+(\d+)\s+\d+$", p.stdout, re.M)}
    ours = {s.name: s.size for s in elf.sections(build.elf) if s.name}
    assert {k: ours[k] for k in theirs} == theirs
    fp = mcu_build.footprint(build.elf)
    assert fp["flash_bytes"] == theirs[".text"] + theirs[".rodata"] + theirs.get(".data", 0) \
        + theirs.get(".ARM.exidx", 0)
    assert fp["stack_bytes"] == theirs[".stack"] == build.stack_bytes
    assert fp["ram_bytes"] == theirs.get(".data", 0) + theirs[".bss"] + theirs[".stack"]
    # the weights sit in flash, the context (activations and neuron state) in RAM
    weights = build.sizes["model_weights.o"]
    assert fp["rodata_bytes"] >= weights["rodata"] > 0
    summary = model_c[1]
    assert fp["bss_bytes"] >= summary["buffer_bytes"] + summary["state_bytes"] > 0


@requires_cc
def test_elf64_sizes_match_binutils(model_c, tmp_path):
    from targets import c_build, elf

    if not shutil.which("size"):
        pytest.skip("binutils' size is not installed")
    obj = c_build.build(model_c[0], tmp_path / "n").objects[1]
    p = subprocess.run(["size", "-A", str(obj)], capture_output=True, text=True, check=True)
    theirs = {m[1]: int(m[2]) for m in re.finditer(r"^(\.\S+)\s+(\d+)\s+\d+$", p.stdout, re.M)}
    ours = {s.name: s.size for s in elf.sections(obj) if s.name}
    assert {k: ours[k] for k in theirs} == theirs and theirs[".rodata"] > 0


@requires_mcu
def test_stack_overflow_and_bad_input_fail_with_one_line(model_c, tmp_path):
    from targets import boards, mcu_build, mcu_run

    folder, _, x, _ = model_c
    board = boards.get("mps2-an386")
    small = mcu_build.build(folder, tmp_path / "small", board, stack_bytes=256)
    with pytest.raises(UserError, match="stack outgrew its reserve"):
        mcu_run.run(small.elf, board, x[:1])
    good = mcu_build.build(folder, tmp_path / "good", board)
    with pytest.raises(UserError, match="not a whole number of images"):
        mcu_run.run(good.elf, board, x[:3, :, :, :7])
    with pytest.raises(UserError, match="stack reserve must be"):
        mcu_build.build(folder, tmp_path / "odd", board, stack_bytes=1004)


def test_missing_tools_name_the_packages(model_c, tmp_path, monkeypatch):
    from targets import boards, mcu_build, mcu_run

    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(UserError, match="gcc-arm-none-eabi libnewlib-arm-none-eabi"):
        mcu_build.build(model_c[0], tmp_path / "b", boards.get("mps2-an386"))
    (tmp_path / "model.elf").write_bytes(b"\x7fELF")
    with pytest.raises(UserError, match="apt-get install qemu-system-arm"):
        mcu_run.run(tmp_path / "model.elf", boards.get("mps2-an386"), model_c[2][:1])
    with pytest.raises(UserError, match="unknown QEMU board"):
        boards.get("mps2-an999")


def test_footprint_gates_name_bytes_against_the_budget():
    from targets.validation import footprint_gates

    fp = {"flash_bytes": 31_949, "ram_bytes": 23_352, "stack_bytes": 4096}
    flash, ram = footprint_gates(fp, flash_kb=16, ram_kb=1)
    assert flash["status"] == ram["status"] == "fail"
    assert flash["detail"].startswith("31.2 KB > budget 16 KB (31,949 B vs 16,384 B")
    assert ram["detail"].startswith("22.8 KB > budget 1 KB (23,352 B vs 1,024 B")
    ok = footprint_gates(fp, flash_kb=32, ram_kb=0)
    assert [g["status"] for g in ok] == ["pass", "skipped"]
    assert footprint_gates({**fp, "flash_bytes": 16_384}, 16, 64)[0]["status"] == "pass"


# -- end to end through the CLI: validate, package, verify ----------------------------------


@pytest.fixture(scope="module")
def mcu_ticket(tmp_path_factory, digits_model):
    """A 50% imp ticket of the trained digits convnet, retrained and exported (C runtime)."""
    skip_unless(requires_mcu)
    run_dir = tmp_path_factory.mktemp("mcu-runs")
    _, export, ticket = small_ticket(run_dir, digits_model)
    return run_dir, export.path / "model.onnx", ticket.path / "model.pt"


@pytest.fixture(scope="module")
def mcu_validated(mcu_ticket):
    run_dir, onnx, ticket = mcu_ticket
    r = run_cli("validate", onnx, "--against", ticket, "--target", "c-cortex-m4,c-cortex-m7",
                "--no-dense", "--out", run_dir, "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout)


@requires_mcu
def test_validate_on_both_boards_gates_parity_flash_and_ram(mcu_validated):
    report = mcu_validated["report"]
    assert [e["target"] for e in report["targets"]] == ["c-cortex-m4", "c-cortex-m7"]
    for e in report["targets"]:
        gates = {g["gate"]: g for g in e["gates"]}
        assert e["passed"] and e["mode"] == "emulated" and e["isa"] == "armv7e-m"
        assert e["parity"]["agreement"] == 1.0 and e["inputs"] == report["inputs"]
        assert gates["parity"]["status"] == gates["accuracy"]["status"] == "pass"
        assert gates["flash"]["status"] == gates["ram"]["status"] == "pass"
        assert gates["latency"]["status"] == "skipped"
        assert "not indicative" in gates["latency"]["detail"]
        fp = e["memory"]["footprint"]
        assert gates["ram"]["detail"].startswith(f"{fp['ram_bytes'] / 1024:.1f} KB <= budget ")
        assert fp["flash_bytes"] > e["c"]["weight_bytes"] and fp["stack_peak_bytes"] > 0
        assert fp["ram_bytes"] >= e["c"]["context_bytes"] + fp["stack_bytes"]
        assert e["icount_instructions"]["p50"] > 0 and "not cycles" in \
            e["icount_instructions"]["note"]
        assert "qemu-system-arm -M mps2-an" in e["command"]


@requires_mcu
def test_a_model_that_does_not_fit_exits_1_with_bytes_vs_budget(mcu_ticket, tmp_path):
    from targets import profiles

    run_dir, onnx, ticket = mcu_ticket
    tiny = tmp_path / "tiny-m4.toml"
    tiny.write_text(profiles.PROFILE_DIR.joinpath("c-cortex-m4.toml").read_text()
                    .replace("ram_kb = 192.0", "ram_kb = 1")
                    .replace("flash_kb = 1024.0", "flash_kb = 4"))
    # its own run directory: a failed validation of the export is not what gets packaged
    r = run_cli("validate", onnx, "--against", ticket, "--target", tiny, "--no-dense",
                "--out", tmp_path / "runs")
    assert r.returncode == 1, r.stderr[-2000:]
    assert re.search(r"ram gate failed: [\d.]+ KB > budget 1 KB \([\d,]+ B vs 1,024 B",
                     r.stderr), r.stderr[-2000:]
    assert re.search(r"flash gate failed: [\d.]+ KB > budget 4 KB", r.stderr)
    assert "Traceback" not in r.stderr


@requires_mcu
def test_bundle_carries_the_firmware_and_verify_reruns_it(mcu_validated, tmp_path):
    import tarfile

    if not shutil.which("ssh-keygen"):
        pytest.skip("ssh-keygen is not installed (apt-get install openssh-client)")
    key = tmp_path / "packager"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True,
                   timeout=60)
    r = run_cli("package", mcu_validated["path"], "--out", tmp_path,
                "--sign", key, "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    bundle = json.loads(r.stdout)["bundle"]
    with tarfile.open(bundle) as tar:
        names = {m.name.split("/", 1)[1] for m in tar.getmembers() if m.isfile()}
    for t in ("c-cortex-m4", "c-cortex-m7"):
        assert {f"c/{t}/model.elf", f"c/{t}/libmodel.a"} <= names
    assert "c/model.h" in names
    # trusted: the very image validation ran is run again on its board
    r = run_cli("verify", bundle, "--trust", f"{key}.pub", "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    runs = {x["target"]: x for x in json.loads(r.stdout)["runs"]}
    assert runs["c-cortex-m4"]["file"] == "c/c-cortex-m4/model.elf"
    for x in runs.values():
        assert x["passed"] and x["agreement"] == 1.0 and x["mode"] == "emulated"
        assert {g["gate"]: g["status"] for g in x["gates"]} == {
            "latency": "skipped", "flash": "pass", "ram": "pass"}
    # rebuilt from the bundled sources, and a budget the firmware misses
    r = run_cli("verify", bundle, "--rebuild-c", "--target", "c-cortex-m7", "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout)["runs"][0]["file"] == "c/model.c (rebuilt here)"
    tiny = tmp_path / "tiny-m7.toml"
    from targets import profiles
    tiny.write_text(profiles.PROFILE_DIR.joinpath("c-cortex-m7.toml").read_text()
                    .replace("ram_kb = 320.0", "ram_kb = 1"))
    r = run_cli("verify", bundle, "--rebuild-c", "--target", tiny)
    assert r.returncode == 1 and "ram ram" not in r.stderr
    assert re.search(r"ram [\d.]+ KB > budget 1 KB", r.stderr), r.stderr[-2000:]
