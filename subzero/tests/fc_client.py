"""Drives `subzero --api-sock` with a real Firecracker client from PyPI:
firecracker-python's `Api` class. Run by tests/fc_client.rs as
`python fc_client.py SUBZERO KERNEL DIR`; prints one line per check and
exits non-zero on the first failure."""

import atexit
import os
import subprocess
import sys
import threading
import time

from firecracker import Api
from firecracker.exceptions import APIError

subzero, kernel, scratch = sys.argv[1:4]
sock = os.path.join(scratch, "fc.sock")
vmm = subprocess.Popen([subzero, "--api-sock", sock, "--id", "fc-client"],
                       stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
# Whatever happens below, the VMM (and its guest, counting forever) goes.
atexit.register(vmm.kill)
lines = []
threading.Thread(target=lambda: lines.extend(iter(vmm.stdout.readline, b"")), daemon=True).start()


def check(what, ok):
    print(("ok: " if ok else "FAILED: ") + what, flush=True)
    if not ok:
        vmm.kill()
        print(vmm.stderr.read().decode(errors="replace"), file=sys.stderr)
        sys.exit(1)


def counts():
    return [int(l.split()[1]) for l in list(lines) if l.startswith(b"count ") and l.endswith(b"\n")]


def wait(cond, secs=30):
    end = time.time() + secs
    while time.time() < end and not cond():
        time.sleep(0.05)
    return cond()


check("the API socket appears", wait(lambda: os.path.exists(sock), 10))
api = Api(sock)
info = api.describe.get().json()
check(f"GET / says Not started ({info})", info["state"] == "Not started" and info["id"] == "fc-client")
check("GET /version has firecracker_version", "firecracker_version" in api.version.get().json())
api.machine_config.put(vcpu_count=1, mem_size_mib=32)
api.boot.put(kernel_image_path=kernel, boot_args="console=ttyS0")
check("GET /vm/config shows the boot source",
      api.vm_config.get().json()["boot-source"]["kernel_image_path"] == kernel)
api.actions.put(action_type="InstanceStart")
check("the guest counts after InstanceStart", wait(lambda: len(counts()) >= 3))
check("GET / says Running", api.describe.get().json()["state"] == "Running")
try:
    api.boot.put(kernel_image_path=kernel)
    check("boot-source after InstanceStart is refused", False)
except APIError as e:
    check(f"boot-source after InstanceStart is refused ({e})", "after starting" in str(e))
api.vm.patch(state="Paused")
check("GET / says Paused", api.describe.get().json()["state"] == "Paused")
paused_at = len(lines)
time.sleep(0.3)
check("a paused guest prints nothing", len(lines) == paused_at)
api.create_snapshot.put(snapshot_path=os.path.join(scratch, "fc.snap"),
                        mem_file_path=os.path.join(scratch, "fc.mem"))
check("the snapshot files exist", os.path.getsize(os.path.join(scratch, "fc.mem")) == 32 << 20)
api.vm.patch(state="Resumed")
last = counts()[-1]
check("the guest counts on after Resumed", wait(lambda: counts()[-1] >= last + 2))
vmm.kill()
vmm.wait()
print("firecracker-python drove subzero: every check passed")
