"""The Kubernetes manifests (deploy/kubernetes/), checked without a cluster: Deployments,
Services, HPAs, NetworkPolicies, certificates against the bootstraps and the CLI parser;
kustomize and the API models when installed."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import time
from pathlib import Path, PurePosixPath

import pytest
import yaml

from control_plane.config import parse_config
from control_plane.lab.envoy_process import envoy_binary
from control_plane.xds_identity import certificate_matches

from .deploy_tree import (
    K8S,
    REGIONS,
    body,
    envoy_validate,
    filenames,
    header_args,
    k8s,
    k8s_docs,
    kustomization,
    listen_port,
    load_all,
    serve_args,
    xds_target,
)

ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------- helpers


def selects(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def container_port(container: dict, port) -> int:
    """A probe's or a Service's target port (a number or a port name) as a number."""
    if isinstance(port, int):
        return port
    return next(p["containerPort"] for p in container["ports"] if p.get("name") == port)


def only_container(deployment: dict) -> dict:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def mount_of(deployment: dict, path: str) -> tuple[dict, dict]:
    """The volumeMount that holds `path`, and its volume."""
    container = only_container(deployment)
    mounts = [m for m in container.get("volumeMounts", [])
              if PurePosixPath(path).is_relative_to(PurePosixPath(m["mountPath"]))]
    assert mounts, f"{path} is on no mounted volume of {deployment['metadata']['name']}"
    mount = max(mounts, key=lambda m: len(m["mountPath"]))
    (volume,) = [v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"]]
    return mount, volume


# ---------------------------------------------------------------- Kubernetes


CONTROL_PLANE = "vertex-gateway-control-plane"


def test_k8s_control_plane_deployment():
    deployment = k8s("Deployment", CONTROL_PLANE)
    spec, pod = deployment["spec"], deployment["spec"]["template"]["spec"]
    assert spec["replicas"] >= 2
    container = only_container(deployment)
    args = serve_args(container["args"])
    assert args.xds_host == "0.0.0.0" and args.admin_host == "0.0.0.0"
    ready = container["readinessProbe"]["httpGet"]
    assert ready["path"] == "/healthz" and container_port(container, ready["port"]) == args.admin_port
    alive = container["livenessProbe"]["httpGet"]
    assert container_port(container, alive["port"]) == args.admin_port
    assert {p["containerPort"] for p in container["ports"]} == {args.xds_port, args.admin_port}
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    security = pod["securityContext"]
    assert security["runAsNonRoot"] is True and security["runAsUser"] != 0
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    # regions.yaml: the ConfigMap mounted whole (no subPath, so updates arrive) at the --config directory
    mount, volume = mount_of(deployment, args.config)
    assert mount["mountPath"] == str(PurePosixPath(args.config).parent) == "/etc/vertex-gateway"
    assert "subPath" not in mount
    configmap = k8s("ConfigMap", volume["configMap"]["name"])
    assert PurePosixPath(args.config).name in configmap["data"]
    # xDS over mTLS, with its files on the mounted server Secret
    assert args.xds_tls_cert and args.xds_tls_key and args.xds_tls_client_ca and not args.insecure_xds
    secrets = {mount_of(deployment, f)[1]["secret"]["secretName"]
               for f in (args.xds_tls_cert, args.xds_tls_key, args.xds_tls_client_ca)}
    assert secrets == {"vertex-gateway-xds-server-tls"}
    # admin off loopback needs its bearer token: a file on a mounted Secret
    assert mount_of(deployment, args.admin_token_file)[1]["secret"]["secretName"] == "vertex-gateway-admin-token"


def test_k8s_control_plane_service_and_pdb():
    deployment = k8s("Deployment", CONTROL_PLANE)
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert selects(deployment["spec"]["selector"]["matchLabels"], labels)
    container = only_container(deployment)
    service = k8s("Service", CONTROL_PLANE)
    assert selects(service["spec"]["selector"], labels)
    ports = {p["port"]: container_port(container, p["targetPort"]) for p in service["spec"]["ports"]}
    assert ports == {18000: 18000, 18001: 18001}
    pdbs = [d for d in k8s_docs() if d["kind"] == "PodDisruptionBudget"
            and selects(d["spec"]["selector"]["matchLabels"], labels)]
    assert len(pdbs) == 1 and pdbs[0]["spec"]["minAvailable"] == 1


def test_k8s_regions_configmap_is_a_valid_config():
    (configmap,) = [d for d in k8s_docs() if d["kind"] == "ConfigMap"]
    config = parse_config(configmap["data"]["regions.yaml"], "deploy/kubernetes/configmap.yaml")
    assert tuple(config.regions) == REGIONS
    assert all(region.tls for region in config.regions.values()), "production regions use TLS to Vertex"


@pytest.mark.parametrize("region", REGIONS)
def test_k8s_envoy_region(region, tmp_path):
    name = f"vertex-gateway-envoy-{region}"
    deployment = k8s("Deployment", name)
    service, hpa = k8s("Service", f"vertex-gateway-{region}"), k8s("HorizontalPodAutoscaler", name)
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert labels["vertex-gateway/region"] == region
    assert selects(deployment["spec"]["selector"]["matchLabels"], labels)
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
    assert 2 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    container = only_container(deployment)
    assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    # the bootstrap: a generated ConfigMap, mounted where -c points
    args = container["args"]
    config_path = args[args.index("-c") + 1]
    mount, volume = mount_of(deployment, config_path)
    (generator,) = [g for g in kustomization()["configMapGenerator"] if g["name"] == volume["configMap"]["name"]]
    key, _, source = generator["files"][0].partition("=")
    assert PurePosixPath(config_path) == PurePosixPath(mount["mountPath"]) / key and "subPath" not in mount
    bootstrap_file = K8S / source
    assert bootstrap_file == K8S / "bootstrap" / f"envoy-{region}.yaml"
    bootstrap = yaml.safe_load(body(bootstrap_file))
    assert bootstrap["node"]["metadata"]["region"] == region
    # Service -> container port == the bootstrap's listener
    assert selects(service["spec"]["selector"], labels)
    (port,) = service["spec"]["ports"]
    assert container_port(container, port["targetPort"]) == listen_port(bootstrap)
    assert container["readinessProbe"]["tcpSocket"]["port"] in ("http", listen_port(bootstrap))
    # xDS: the control plane's Service, over mTLS with the files of the mounted client Secret
    host, xds_port = xds_target(bootstrap)
    assert host == CONTROL_PLANE
    assert xds_port in [p["port"] for p in k8s("Service", CONTROL_PLANE)["spec"]["ports"]]
    tls = [c for c in bootstrap["static_resources"]["clusters"] if c["name"] == "xds_cluster"][0]["transport_socket"]
    names = tls["typed_config"]["common_tls_context"]["validation_context"]["match_typed_subject_alt_names"]
    assert [n["matcher"]["exact"] for n in names] == [CONTROL_PLANE]
    files = filenames(bootstrap)
    assert len(files) == 3
    # its own region's client certificate: the control plane refuses a certificate naming another region
    assert {mount_of(deployment, f)[1]["secret"]["secretName"] for f in files} == {
        f"vertex-gateway-xds-client-tls-{region}"}
    # the Deployment's own Envoy arguments are accepted (POD_NAME as the downward API would set it)
    envoy_validate([a.replace("$(POD_NAME)", f"{name}-7d9f-abcde") for a in args], tmp_path, bootstrap_file.read_text())


def matches(selector: dict | None, labels: dict) -> bool:
    """A label selector (matchLabels only; {} selects everything)."""
    return all(labels.get(k) == v for k, v in (selector or {}).get("matchLabels", {}).items())


def ingress_allowed(target: str, port: int, *, pod: dict, namespace: dict | None) -> bool:
    """Would the NetworkPolicies admit a connection to Deployment `target`'s pods on `port`
    from a pod labelled `pod` in a namespace labelled `namespace` (None: the gateway's own)?"""
    deployment = k8s("Deployment", target)
    labels, container = deployment["spec"]["template"]["metadata"]["labels"], only_container(deployment)
    policies = [d for d in k8s_docs() if d["kind"] == "NetworkPolicy" and matches(d["spec"]["podSelector"], labels)]
    assert policies, f"no NetworkPolicy selects {target}: every port of it would be open"
    for policy in policies:
        assert "Ingress" in policy["spec"]["policyTypes"]
        for rule in policy["spec"].get("ingress", []):
            if port not in [container_port(container, p["port"]) for p in rule["ports"]]:
                continue
            for peer in rule["from"]:
                if "ipBlock" in peer:
                    continue
                in_namespace = (namespace is None if "namespaceSelector" not in peer
                                else matches(peer["namespaceSelector"], namespace or {}))
                if in_namespace and ("podSelector" not in peer or matches(peer["podSelector"], pod)):
                    return True
    return False


def test_k8s_network_policies_admit_exactly_the_documented_traffic():
    envoy_pod = k8s("Deployment", "vertex-gateway-envoy-us-east4")["spec"]["template"]["metadata"]["labels"]
    plane = serve_args(only_container(k8s("Deployment", CONTROL_PLANE))["args"])
    monitoring, client = {"vertex-gateway/monitoring": "true"}, {"vertex-gateway/client": "true"}
    stats = [container_port(only_container(k8s("Deployment", f"vertex-gateway-envoy-{r}")), "http-stats")
             for r in REGIONS]
    for region in REGIONS:  # the stats port is the bootstrap's --stats-listen
        args = header_args(K8S / "bootstrap" / f"envoy-{region}.yaml")
        assert args[args.index("--stats-listen") + 1] == "0.0.0.0:9102"
    assert stats == [9102] * len(REGIONS)
    xds, admin = plane.xds_port, plane.admin_port
    # the control plane: xDS from the gateway's Envoys only; admin from monitoring only
    assert ingress_allowed(CONTROL_PLANE, xds, pod=envoy_pod, namespace=None)
    assert not ingress_allowed(CONTROL_PLANE, xds, pod=envoy_pod, namespace=client)  # an Envoy-like pod elsewhere
    assert not ingress_allowed(CONTROL_PLANE, xds, pod=client, namespace=client)
    assert not ingress_allowed(CONTROL_PLANE, xds, pod={}, namespace=monitoring)
    assert ingress_allowed(CONTROL_PLANE, admin, pod={}, namespace=monitoring)
    assert not ingress_allowed(CONTROL_PLANE, admin, pod=envoy_pod, namespace=None)
    assert not ingress_allowed(CONTROL_PLANE, admin, pod=client, namespace=client)
    for region in REGIONS:
        envoy = f"vertex-gateway-envoy-{region}"
        # clients: a labelled namespace, or a labelled pod in any namespace
        assert ingress_allowed(envoy, 8080, pod={}, namespace=client)
        assert ingress_allowed(envoy, 8080, pod=client, namespace={"kubernetes.io/metadata.name": "my-app"})
        assert not ingress_allowed(envoy, 8080, pod={}, namespace={"kubernetes.io/metadata.name": "my-app"})
        assert not ingress_allowed(envoy, 8080, pod={}, namespace=monitoring)
        # the stats listener: monitoring only; Envoy's admin port is on loopback, admitted to nobody
        assert ingress_allowed(envoy, 9102, pod={}, namespace=monitoring)
        assert not ingress_allowed(envoy, 9102, pod={}, namespace=client)
        assert not ingress_allowed(envoy, 9901, pod={}, namespace=monitoring)
    runbook = (ROOT / "docs" / "RUNBOOK.md").read_text()
    for label in ("vertex-gateway/monitoring=true", "vertex-gateway/client=true"):
        assert label in runbook, f"docs/RUNBOOK.md must say how to label namespaces: {label}"


def test_k8s_optional_manifests_match_the_stack():
    (monitor,) = load_all(K8S / "monitoring" / "servicemonitor.yaml")
    labels = k8s("Service", CONTROL_PLANE)["metadata"]["labels"]
    assert selects(monitor["spec"]["selector"]["matchLabels"], labels)
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in [p["name"] for p in k8s("Service", CONTROL_PLANE)["spec"]["ports"]]
    assert endpoint["authorization"]["credentials"]["name"] == "vertex-gateway-admin-token"
    commented = (K8S / "kustomization.yaml").read_text()
    assert "# - monitoring/servicemonitor.yaml" in commented and "# - xds-tls/cert-manager.yaml" in commented
    # Envoys: the PodMonitor scrapes the bootstraps' stats listener by its container port name
    assert "# - monitoring/podmonitor-envoy.yaml" in commented
    (pods,) = load_all(K8S / "monitoring" / "podmonitor-envoy.yaml")
    (endpoint,) = pods["spec"]["podMetricsEndpoints"]
    assert endpoint["path"] == "/stats/prometheus"
    for region in REGIONS:
        deployment = k8s("Deployment", f"vertex-gateway-envoy-{region}")
        assert selects(pods["spec"]["selector"]["matchLabels"], deployment["spec"]["template"]["metadata"]["labels"])
        port = container_port(only_container(deployment), endpoint["port"])
        args = header_args(K8S / "bootstrap" / f"envoy-{region}.yaml")
        assert args[args.index("--stats-listen") + 1] == f"0.0.0.0:{port}"


def test_k8s_xds_certificates_match_what_the_bootstraps_check():
    certificates = {d["spec"]["secretName"]: d["spec"] for d in load_all(K8S / "xds-tls" / "cert-manager.yaml")
                    if d["kind"] == "Certificate"}
    server = certificates["vertex-gateway-xds-server-tls"]
    namespace = kustomization()["namespace"]
    assert CONTROL_PLANE in server["dnsNames"] and f"{CONTROL_PLANE}.{namespace}.svc" in server["dnsNames"]
    assert "server auth" in server["usages"]
    issuer = server["issuerRef"]["name"]
    for region in ("us-central1", "us-east4"):
        client = certificates[f"vertex-gateway-xds-client-tls-{region}"]
        assert "client auth" in client["usages"]
        assert client["issuerRef"]["name"] == issuer  # one CA for both
        # the name the control plane checks: the region as the first DNS label (docs/SPEC.md)
        assert all(name.split(".")[0] == region for name in [client["commonName"], *client["dnsNames"]])
        names = [client["commonName"], *client["dnsNames"]]
        pod = f"vertex-gateway-envoy-{region}-7d9f-abcde"  # --service-node $(POD_NAME)
        assert certificate_matches(names, pod, region)
        other = "us-east4" if region == "us-central1" else "us-central1"
        assert not certificate_matches(names, f"vertex-gateway-envoy-{other}-7d9f-abcde", other)


def kustomize_cli() -> list[str] | None:
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    return None


def test_kustomize_renders_the_stack():
    tool = kustomize_cli()
    if tool is None:
        pytest.skip("neither kubectl nor kustomize is installed")
    done = subprocess.run([*tool, str(K8S)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    rendered = [d for d in yaml.safe_load_all(done.stdout) if d]
    namespaced = [d for d in rendered if d["kind"] != "Namespace"]
    assert {d["metadata"].get("namespace") for d in namespaced} == {kustomization()["namespace"]}
    configmaps = {d["metadata"]["name"]: d for d in rendered if d["kind"] == "ConfigMap"}
    assert "vertex-gateway-regions" in configmaps, "regions ConfigMap keeps its name (hot reload, no restart)"
    for region in REGIONS:
        (deployment,) = [d for d in rendered if d["kind"] == "Deployment"
                         and d["metadata"]["name"] == f"vertex-gateway-envoy-{region}"]
        (volume,) = [v for v in deployment["spec"]["template"]["spec"]["volumes"] if "configMap" in v]
        generated = configmaps[volume["configMap"]["name"]]  # the hash-suffixed name
        assert re.fullmatch(rf"vertex-gateway-envoy-bootstrap-{region}-[a-z0-9]+", volume["configMap"]["name"])
        assert generated["data"]["envoy.yaml"] == (K8S / "bootstrap" / f"envoy-{region}.yaml").read_text()
    images = {c["image"] for d in rendered if d["kind"] == "Deployment"
              for c in d["spec"]["template"]["spec"]["containers"]}
    assert "vertex-gateway" not in images, "kustomization `images:` names the control plane image"


def test_k8s_manifests_have_no_unknown_fields():
    """Typos (readinesProbe, averageUtilisation) are silently dropped by some tools: check every key
    against the Kubernetes API models, when the kubernetes client is installed."""
    client = pytest.importorskip("kubernetes.client")

    def check(obj, kind, path, errors):
        if isinstance(kind, str):
            listed = re.fullmatch(r"[lL]ist\[(.*)\]", kind)
            if listed:
                for i, item in enumerate(obj):
                    check(item, listed.group(1), f"{path}[{i}]", errors)
                return
            if re.fullmatch(r"(dict\(str, |Dict\[str, ).*", kind) or kind.lower() in (
                    "str", "int", "bool", "object", "float", "datetime"):
                return
            kind = getattr(client, kind)
        assert isinstance(obj, dict), f"{path}: expected a mapping"
        fields = {json_name: attr for attr, json_name in kind.attribute_map.items()}
        for key, value in obj.items():
            if key not in fields:
                errors.append(f"{path}.{key}: not a field of {kind.__name__}")
            else:
                check(value, kind.openapi_types[fields[key]], f"{path}.{key}", errors)

    errors: list[str] = []
    for doc in k8s_docs():
        version = doc["apiVersion"].rpartition("/")[2]
        model = getattr(client, version[0].upper() + version[1:] + doc["kind"])
        check(doc, model, f"{doc['kind']}/{doc['metadata']['name']}", errors)
    assert not errors


@pytest.mark.e2e
def test_k8s_envoy_prestop_drains_a_real_envoy(tmp_path):
    """The preStop hook's request (bash /dev/tcp to the admin port) is one Envoy's admin accepts."""
    if not shutil.which("bash"):
        pytest.skip("no bash")
    hook = only_container(k8s("Deployment", "vertex-gateway-envoy-us-east4"))["lifecycle"]["preStop"]["exec"]["command"]
    assert hook[:2] == ["/bin/bash", "-c"]
    script = hook[2]
    assert "127.0.0.1/9901" in script and "/drain_listeners?graceful" in script
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        admin_port = probe.getsockname()[1]
    config = tmp_path / "envoy.yaml"
    config.write_text(yaml.safe_dump({"admin": {"address": {"socket_address": {
        "address": "127.0.0.1", "port_value": admin_port}}}}))
    envoy = subprocess.Popen([envoy_binary(), "-c", str(config), "--disable-hot-restart"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        request = script.replace("127.0.0.1/9901", f"127.0.0.1/{admin_port}").split(";")[0]
        request = request.replace("cat <&3 >/dev/null", "cat <&3")
        deadline = time.monotonic() + 20
        while True:
            done = subprocess.run(["bash", "-c", request], capture_output=True, text=True, timeout=10)
            if done.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert done.stdout.startswith("HTTP/1.1 200"), done.stdout + done.stderr
    finally:
        envoy.terminate()
        envoy.wait(10)
