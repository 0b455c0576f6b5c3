"""``--launch``: the accelerate launch command built from the user's options."""

import pytest

from tunelab.tasks.launch import launch_command


@pytest.mark.parametrize("launch", ["--num_processes 2", "--num-processes 2", "--num-processes=2", "--num-machines 2"])
def test_several_processes_get_ddp_however_accelerate_spells_the_option(launch):
    command = launch_command(launch, ["train", "c.yaml"])
    assert "--multi_gpu" in command


@pytest.mark.parametrize("launch", ["--num-processes 2 --use-fsdp", "--num_processes 2 --config-file fsdp.yaml", "--num-processes 2 --multi-gpu"])
def test_a_mode_of_accelerates_own_is_kept(launch):
    assert "--multi_gpu" not in launch_command(launch, [])


@pytest.mark.parametrize("launch", ["--dynamo_backend inductor", "--dynamo-backend inductor", "--dynamo-backend=inductor"])
def test_the_users_dynamo_backend_is_not_overridden(launch):
    command = launch_command(launch, [])
    assert "no" not in command[: command.index("-m", 3)]
