"""The Kubernetes deployment's instance YAML loads with the launcher's own package. No cluster runs here, so
the in-cluster config is swapped for a stub kubeconfig (the launcher only reads it at start-up)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
KUBECONFIG = """apiVersion: v1
kind: Config
clusters: [{name: stub, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: stub, user: {token: stub}}]
contexts: [{name: stub, context: {cluster: stub, user: stub}}]
current-context: stub
"""


def test_k8s_instance_yaml_loads_with_dagster_k8s(tmp_path, make_database):
    pytest.importorskip("dagster_k8s", reason="the dev extra installs dagster-k8s; pip install -e '.[dev]'")
    (tmp_path / "kubeconfig").write_text(KUBECONFIG)
    yaml = (REPO / "deploy" / "k8s" / "dagster.yaml").read_text()
    yaml = yaml.replace(
        "load_incluster_config: true", f"load_incluster_config: false\n    kubeconfig_file: {tmp_path}/kubeconfig"
    )
    (tmp_path / "dagster.yaml").write_text(yaml)
    code = (
        "import dagster as dg; i = dg.DagsterInstance.get(); "
        "print(type(i.run_launcher).__name__, type(i.run_storage).__name__, "
        "i.get_concurrency_config().pool_config.default_pool_limit)"
    )
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path), "DAGSTER_PG_URL": make_database("cbd_k8s")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["K8sRunLauncher", "PostgresRunStorage", "1"]
