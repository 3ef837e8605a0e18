"""docs/RUNBOOK.md's "Google Cloud" section, run as far as a machine without a project can:
the systemd units (systemd-analyze verify, their commands accepted by the CLI and by Envoy),
the control_plane commands it shows, its regions.yaml snippets, the docker build and image
names, the Workload Identity member, the internal load balancer patch; and that the metrics it
names are ones the control plane exports."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from control_plane.config import parse_config
from control_plane.lab.envoy_process import envoy_binary

from .deploy_tree import K8S, k8s, kustomization, serve_args

ROOT = Path(__file__).resolve().parent.parent
SYSTEMD = ROOT / "deploy" / "systemd"
VENV = "/opt/vertex-gateway/venv"


def gcp_section() -> str:
    text = (ROOT / "docs" / "RUNBOOK.md").read_text()
    return text[text.index("\n## Google Cloud\n"):text.index("\n## ", text.index("\n## Google Cloud\n") + 5)]


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", gcp_section(), re.S)


def commands(prefix: str) -> list[list[str]]:
    """Every shell command in the section's bash blocks starting with `prefix` (continuations joined)."""
    out = []
    for block in blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            if line.startswith(prefix):
                out.append(shlex.split(line.split(" #")[0].split(" > ")[0], comments=False))
    return out


def unit_execs(path: Path, key: str) -> list[list[str]]:
    text = path.read_text().replace("\\\n", " ")
    return [shlex.split(x.partition("=")[2]) for x in text.splitlines() if x.startswith(key + "=")]


def unit_exec(path: Path, key: str = "ExecStart") -> list[str]:
    (argv,) = unit_execs(path, key)
    return argv


def header_command(path: Path) -> list[str]:
    """The bootstrap command in a unit file's leading comments."""
    lines = [x[1:].strip() for x in path.read_text().splitlines() if x.startswith("#")]
    text = " ".join(lines).replace("\\ ", " ")
    start = text.index(f"{VENV}/bin/python -m control_plane bootstrap")
    return shlex.split(text[start:text.index(">", start)])


def localized(argv: list[str], etc: Path) -> list[str]:
    """The venv's python -> this interpreter, /etc/vertex-gateway -> a temp directory."""
    return [a.replace(f"{VENV}/bin/python", sys.executable).replace("/etc/vertex-gateway", str(etc)) for a in argv]


def test_systemd_units_pass_systemd_analyze_verify(tmp_path):
    if not shutil.which("systemd-analyze"):
        pytest.skip("systemd-analyze is not installed")
    for binary in ("/bin/kill", "/bin/sleep", "/usr/bin/curl"):
        if not Path(binary).exists():
            pytest.skip(f"{binary} (named by the units) is not on this machine")
    units = []
    for source, name in [(SYSTEMD / "vertex-gateway-control-plane.service", "vertex-gateway-control-plane.service"),
                         (SYSTEMD / "vertex-gateway-envoy@.service", "vertex-gateway-envoy@us-central1.service")]:
        # the units' venv -> this test's venv (verify checks that the programs exist)
        (tmp_path / name).write_text(source.read_text().replace(VENV, sys.prefix))
        units.append(str(tmp_path / name))
    done = subprocess.run(["systemd-analyze", "verify", *units], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert not [line for line in done.stderr.splitlines() if "vertex-gateway" in line], done.stderr


def test_control_plane_unit_runs_the_serve_the_cli_accepts():
    argv = unit_exec(SYSTEMD / "vertex-gateway-control-plane.service")
    assert argv[:3] == [f"{VENV}/bin/python", "-m", "control_plane"], "the venv's interpreter, not activated"
    args = serve_args(argv[3:])
    assert args.config == "/etc/vertex-gateway/regions.yaml"
    assert args.xds_tls_cert and args.xds_tls_key and args.xds_tls_client_ca and not args.insecure_xds
    assert args.admin_token_file, "admin off loopback needs a bearer token"
    assert (args.xds_port, args.admin_port) == (18000, 18001)
    reload = unit_exec(SYSTEMD / "vertex-gateway-control-plane.service", "ExecReload")
    assert reload == ["/bin/kill", "-HUP", "$MAINPID"]


def test_envoy_unit_runs_the_bootstrap_its_header_and_the_runbook_make(tmp_path):
    unit = SYSTEMD / "vertex-gateway-envoy@.service"
    command = header_command(unit)
    (shown,) = commands(f"{VENV}/bin/python -m control_plane bootstrap")
    assert shown == command, "the runbook and the unit file show the same bootstrap command"
    made = subprocess.run(localized(command, tmp_path), capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert made.returncode == 0, made.stderr
    bootstrap = yaml.safe_load(made.stdout)
    assert bootstrap["node"]["metadata"]["region"] == "us-central1"
    argv = [a.replace("%i", "us-central1") for a in unit_exec(unit)]
    assert argv[0] == f"{VENV}/bin/envoy"
    assert argv[argv.index("-c") + 1] == "/etc/vertex-gateway/envoy-us-central1.yaml"
    # Envoy accepts the unit's arguments with that bootstrap (the TLS files made by a test CA)
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    leaf = ca.issue_cert("vertex-gateway-envoy")
    (tmp_path / "secrets").mkdir()
    ca.cert_pem.write_to_path(str(tmp_path / "secrets" / "xds-ca.crt"))
    leaf.cert_chain_pems[0].write_to_path(str(tmp_path / "secrets" / "xds-client.crt"))
    leaf.private_key_pem.write_to_path(str(tmp_path / "secrets" / "xds-client.key"))
    (tmp_path / "envoy-us-central1.yaml").write_text(made.stdout)
    done = subprocess.run([envoy_binary(), "--mode", "validate", *localized(argv[1:], tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    drain, wait = unit_execs(unit, "ExecStop")
    assert drain[0].lstrip("-") == "/usr/bin/curl" and "http://127.0.0.1:9901/drain_listeners?graceful" in drain
    assert wait[0] == "/bin/sleep" and int(wait[1]) <= int(argv[argv.index("--drain-time-s") + 1])
    admin = bootstrap["admin"]["address"]["socket_address"]
    assert (admin["address"], admin["port_value"]) == ("127.0.0.1", 9901), "ExecStop drains this admin address"


def test_runbook_validate_command_runs(tmp_path):
    (configmap,) = [d for d in yaml.safe_load_all((K8S / "configmap.yaml").read_text()) if d]
    (tmp_path / "regions.yaml").write_text(configmap["data"]["regions.yaml"])
    (validate,) = commands(f"{VENV}/bin/python -m control_plane validate")
    done = subprocess.run(localized(validate, tmp_path), capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0 and "OK" in done.stdout, done.stdout + done.stderr


def test_runbook_regions_snippets_are_valid_configs():
    (configmap,) = [d for d in yaml.safe_load_all((K8S / "configmap.yaml").read_text()) if d]
    base = yaml.safe_load(configmap["data"]["regions.yaml"])
    snippets = [yaml.safe_load(b) for b in blocks("yaml")]
    assert len(snippets) == 2
    psc, public = snippets
    for snippet in snippets:
        config = parse_config(yaml.safe_dump({**base, "regions": snippet["regions"]}), "RUNBOOK.md")
        assert set(config.regions) == {"us-central1", "us-east4"}
        assert all(r.tls and r.port == 443 for r in config.regions.values())
    assert all(re.fullmatch(r"10(\.\d+){3}", r["address"]) for r in psc["regions"].values())
    assert [r["address"] for r in public["regions"].values()] == [
        f"{name}-aiplatform.googleapis.com" for name in public["regions"]]


def test_runbook_psc_forwarding_rules_have_global_access():
    rules = [c for c in commands("gcloud compute forwarding-rules create")]
    assert rules and all("--allow-psc-global-access" in c and any(a.startswith("--target-service-attachment=")
                                                                  for a in c) for c in rules)


def dockerfile_args() -> set[str]:
    return set(re.findall(r"^ARG (\w+)", (ROOT / "Dockerfile").read_text(), re.M))


def test_runbook_docker_build_matches_the_dockerfile_and_the_kustomization():
    (build,) = commands("docker build")
    image = build[build.index("-t") + 1]
    mentioned = set(re.findall(r"--build-arg (\w+)=", gcp_section()))
    assert mentioned and mentioned <= dockerfile_args()
    (push,) = commands("docker push")
    assert push[-1] == image
    (entry,) = kustomization()["images"]
    name, _, tag = image.rpartition(":")
    assert name == entry["newName"].replace("my-project", "PROJECT") and tag == entry["newTag"]
    # deploy/test-containers.sh builds the product image with build arguments the Dockerfile takes
    (line,) = [x for x in (ROOT / "deploy" / "test-containers.sh").read_text().splitlines()
               if x.startswith("build vertex-gateway ")]
    assert set(re.findall(r"--build-arg (\w+)=", line)) == {"PYTHON_IMAGE"} <= dockerfile_args()


def test_runbook_workload_identity_member_is_the_control_plane_service_account():
    (binding,) = commands("gcloud iam service-accounts add-iam-policy-binding")
    member = next(a for a in binding if a.startswith("--member=")).partition("=")[2]
    namespace, account = re.fullmatch(r"serviceAccount:PROJECT\.svc\.id\.goog\[([^/]+)/([^]]+)\]", member).groups()
    assert namespace == kustomization()["namespace"]
    service_account = k8s("ServiceAccount", account)
    google = next(a for a in binding if "@" in a and not a.startswith("--"))
    annotated = service_account["metadata"]["annotations"]["iam.gke.io/gcp-service-account"]
    assert google.split("@")[0] == annotated.split("@")[0]
    deployment = k8s("Deployment", "vertex-gateway-control-plane")
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == account


def test_runbook_internal_load_balancer_patch_applies_to_the_region_service(tmp_path):
    if not shutil.which("kubectl"):
        pytest.skip("kubectl is not installed")
    (annotate,) = commands("kubectl -n vertex-gateway annotate service")
    (patch,) = commands("kubectl -n vertex-gateway patch service")
    name = patch[patch.index("service") + 1]
    assert annotate[annotate.index("service") + 1] == name
    service = tmp_path / "service.yaml"
    service.write_text(yaml.safe_dump(k8s("Service", name)))
    # the same patch and annotation, applied offline to the manifest
    patched = subprocess.run(["kubectl", "patch", "--local", "-f", str(service), "-p", patch[-1], "-o", "yaml"],
                             capture_output=True, text=True, timeout=60)
    assert patched.returncode == 0, patched.stderr
    service.write_text(patched.stdout)
    key, _, value = annotate[-1].partition("=")
    annotated = subprocess.run(["kubectl", "annotate", "--local", "-f", str(service), annotate[-1], "-o", "yaml"],
                               capture_output=True, text=True, timeout=60)
    assert annotated.returncode == 0, annotated.stderr
    result = yaml.safe_load(annotated.stdout)
    assert result["spec"]["type"] == "LoadBalancer" and result["metadata"]["annotations"][key] == value
    assert [p["port"] for p in result["spec"]["ports"]] == [8080]


def test_runbook_names_only_metrics_the_control_plane_exports():
    from control_plane.metrics import Metrics

    exported = set()
    for family in Metrics().registry.collect():
        suffixes = {"counter": ["_total"], "histogram": ["", "_bucket", "_count", "_sum"]}.get(family.type, [""])
        exported |= {family.name + s for s in suffixes}
    runbook = (ROOT / "docs" / "RUNBOOK.md").read_text()
    named = set(re.findall(r"\bvertex_gateway_[a-z_]+", runbook))
    assert named, "the runbook names the control plane's metrics"
    assert named <= exported, f"not exported: {sorted(named - exported)}"
