"""What rules/instance.smk reads (pipeline.workflow.instance, torch-free): the runs of an instance
experiment, their previous models, their --params; and the repository's methods.cl4wsis passes
its schema."""

import json

import yaml

from pipeline.workflow.instance import INSTANCE_MODEL, instance_params, instance_previous, instance_targets


def _config():
    with open("config.yaml") as f:
        return yaml.safe_load(f)


def test_targets_cover_every_step_of_every_task_protocol_and_seed():
    config = _config()
    config["dataset"]["name"] = "demo-inst"
    config["experiments"].update(tasks=["15-5", "10-5-5"], protocols=["overlap", "disjoint"], seeds=[0, 1])
    targets = instance_targets(config)
    assert len(targets) == (2 + 3) * 2 * 2  # 15-5: steps 0-1; 10-5-5: steps 0-2
    assert "results/demo-inst/10-5-5-disjoint/seed1/instance/step2/cl4wsis/metrics.json" in targets
    assert len(set(targets)) == len(targets)


def test_previous_model_and_params_per_step():
    wildcards = {"dataset": "d", "task": "10-5-5", "protocol": "overlap", "seed": "3", "step": "2"}
    assert instance_previous(wildcards) == {"previous": INSTANCE_MODEL.format(**{**wildcards, "step": 1})}
    assert instance_previous({**wildcards, "step": "0"}) == {}
    config = _config()
    step0, step1 = json.loads(instance_params(config, 0)), json.loads(instance_params(config, "1"))
    assert step0["train"] == config["train_base"] and step1["train"] == config["train_step"]
    assert step1["method"]["schedule"] == config["methods"]["cl4wsis"]["schedule"]
    assert step1["method"]["relaxed"] is False and step1["model"] == config["model"]


def test_repository_config_passes_the_cl4wsis_schema():
    import jsonschema

    with open("schemas/config.schema.yaml") as f:
        schema = yaml.safe_load(f)
    config = _config()
    jsonschema.validate(config, schema)
    bad = {**config, "methods": {**config["methods"], "cl4wsis": {**config["methods"]["cl4wsis"], "flac_classes": "x"}}}
    try:
        jsonschema.validate(bad, schema)
    except jsonschema.ValidationError as error:
        assert "flac_classes" in ".".join(map(str, error.absolute_path))
    else:
        raise AssertionError("a bad flac_classes passed the schema")
