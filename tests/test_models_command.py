"""``attendseg models`` lists every registered family, found through the model_type registry."""

import json

from typer.testing import CliRunner

from attendseg.adapters import adapter_for, adapters
from attendseg.cli.main import app


def test_models_lists_every_registered_family_with_its_hub_ids():
    result = CliRunner().invoke(app, ["models", "--json"])
    assert result.exit_code == 0, result.output
    listed = {row["family"]: row for row in json.loads(result.output)}
    registered = adapters()
    assert {"llava", "difflmm"} <= set(listed)
    assert set(listed) == {cls.family for cls in registered}
    for cls in registered:
        row = listed[cls.family]
        assert row["hub_ids"] and all("/" in hub_id for hub_id in row["hub_ids"])
        assert row["layout"] and row["model_class"]
        for model_type in row["model_types"]:
            assert adapter_for(model_type) is cls
    text = CliRunner().invoke(app, ["models"]).output
    assert all(f"--model {hub_id}" in text for cls in registered for hub_id in cls.hub_ids)
    assert "--model shapes-qwen2vl (the default), --model shapes-llava" in text
