"""A scenario through a client generated from the served OpenAPI document alone.

Run by tests/contract.rs: `python contract_client.py <dir holding the generated package
"vmw"> <socket> <suffix>`. As root (an admin and an orchestrator) it registers two users,
creates a project, unlocks it with both halves (the member half as the member), and as that
member creates a drive and a VM, starts it, and stops it. Every call goes through the
generated typed functions and models over the daemon's Unix socket; a wrong status or shape
fails the run.
"""

import sys

import httpx

sys.path.insert(0, sys.argv[1])
socket, suffix = sys.argv[2], sys.argv[3]

from vmw import Client  # noqa: E402
from vmw.api.drives import create_drive  # noqa: E402
from vmw.api.me import me  # noqa: E402
from vmw.api.projects import create_project, unlock_project  # noqa: E402
from vmw.api.users import put_user  # noqa: E402
from vmw.api.vms import create_vm, get_vm, start_vm, stop_vm  # noqa: E402
from vmw.models import (  # noqa: E402
    ChangedUserView,
    CreateDriveRequest,
    CreatedProjectView,
    CreateProjectRequest,
    CreateVmRequest,
    DriveView,
    LockStatus,
    Me,
    PutUserRequest,
    StopRequest,
    UnlockRequest,
    VmState,
    VmView,
)


def client(user=None):
    headers = {"Vmwarden-User": user} if user else {}
    return Client(
        base_url="http://localhost",
        headers=headers,
        timeout=httpx.Timeout(120.0),
        httpx_args={"transport": httpx.HTTPTransport(uds=socket)},
        raise_on_unexpected_status=True,
    )


def ok(response, model, status=200):
    assert response.status_code == status, (response.status_code, response.content)
    assert isinstance(response.parsed, model), response.parsed
    return response.parsed


root = client()
member, other = f"gen{suffix}a", f"gen{suffix}b"
name = f"gen-{suffix}"

ok(me.sync_detailed(client=root), Me)
for user in (member, other):
    ok(put_user.sync_detailed(user, client=root, body=PutUserRequest(team="gen")), ChangedUserView)

created = ok(
    create_project.sync_detailed(
        client=root, body=CreateProjectRequest(name=name, members=[member, other])
    ),
    CreatedProjectView,
    201,
)
alice = client(member)
status = ok(
    unlock_project.sync_detailed(name, client=root, body=UnlockRequest(share=created.admin_share)),
    LockStatus,
)
status = ok(
    unlock_project.sync_detailed(name, client=alice, body=UnlockRequest(share=created.member_share)),
    LockStatus,
)
assert status.locked is False, status

drive = ok(
    create_drive.sync_detailed(
        client=alice, body=CreateDriveRequest(project=name, name="boot", size_mib=16)
    ),
    DriveView,
    201,
)
vm = ok(
    create_vm.sync_detailed(
        client=alice,
        body=CreateVmRequest(
            name="web", project=name, vcpus=1, memory_mib=64, drives=[str(drive.id)]
        ),
    ),
    VmView,
    201,
)
assert vm.state == VmState.STOPPED, vm.state

started = ok(start_vm.sync_detailed(str(vm.id), client=alice), VmView)
assert started.state == VmState.RUNNING, started.state
# The VM is found by its name too.
assert ok(get_vm.sync_detailed("web", client=alice), VmView).id == vm.id

stopped = ok(
    stop_vm.sync_detailed(str(vm.id), client=alice, body=StopRequest(force=True, wait=True)),
    VmView,
)
assert stopped.state == VmState.STOPPED, stopped.state
print("generated client scenario passed")
