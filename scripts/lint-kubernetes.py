#!/usr/bin/env python3
"""Renders every Kustomize variant under deploy/kubernetes and cross-checks the result.

Run by scripts/lint-deploy.sh (which installs kubectl and PyYAML into .tools/lint-py/):

    lint-kubernetes.py render KUBECTL OUT   # kubectl kustomize every variant into OUT/
    lint-kubernetes.py check OUT            # what the API schemas cannot see

`render` first checks that each kustomization names exactly the files beside it (a
forgotten patch is applied nowhere, silently), then writes OUT/<variant>.yaml for the
base, each overlay, and each overlay with the optional components its kustomization
mentions (enabled in a throw-away kustomization), and OUT/<variant>.core.yaml with only
the resources of Kubernetes' own API groups, for kubernetes-validate. `check` reads the
rendered variants: the base renders alone (no optional component needed) and some variant
enables each component; in every workload (Deployments and StatefulSets) every probe has
exactly one handler and names a port the container has, what a pod references
(ConfigMaps, Secrets and their keys, volumes, ports) is rendered too, images carry a
version tag or a digest (never latest); every Service, PodDisruptionBudget and
NetworkPolicy selects the pods of some workload (the barazo-session Deployment, or a
component's StatefulSet such as Valkey), and a Service's named target ports are ports of
the pods it selects; the Service VALKEY_URL names, when the variant renders one, serves
that port. Exits non-zero on any problem.
"""

import os
import pathlib
import re
import subprocess
import sys
import tempfile
import urllib.parse

import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
KUBERNETES = ROOT / "deploy/kubernetes"
PROBES = ("readinessProbe", "livenessProbe", "startupProbe")
HANDLERS = ("exec", "httpGet", "tcpSocket", "grpc")

problems = []


def problem(where, text):
    problems.append(f"{where}: {text}")


def kustomizations():
    """Every kustomization.yaml under deploy/kubernetes, with its parsed content."""
    for path in sorted(KUBERNETES.rglob("kustomization.yaml")):
        yield path.parent, yaml.safe_load(path.read_text())


def check_named_files(directory, kustomization):
    """The files beside kustomization.yaml are exactly those it names."""
    where = directory.relative_to(ROOT) / "kustomization.yaml"
    named = []
    for entry in kustomization.get("resources") or []:
        target = directory / entry
        if target.is_dir():
            if not (target / "kustomization.yaml").is_file():
                problem(where, f"{entry} has no kustomization.yaml")
        elif target.is_file():
            named.append(entry)
        else:
            problem(where, f"resource {entry} does not exist")
    for patch in kustomization.get("patches") or []:
        if "path" in patch:
            named.append(patch["path"])
            if not (directory / patch["path"]).is_file():
                problem(where, f"patch {patch['path']} does not exist")
    for component in kustomization.get("components") or []:
        if not (directory / component / "kustomization.yaml").is_file():
            problem(where, f"component {component} has no kustomization.yaml")
    present = sorted(p.name for p in directory.glob("*.yaml") if p.name != "kustomization.yaml")
    for name in present:
        if name not in named:
            problem(where, f"{name} is beside it but named nowhere (resources, patches)")
    for name in sorted(set(named)):
        if named.count(name) > 1:
            problem(where, f"{name} named twice")


def mentioned_components(directory):
    """Component directories an overlay names, commented out or not: each is rendered
    enabled, so an optional component is linted as it would be applied."""
    text = (directory / "kustomization.yaml").read_text()
    found = []
    for relative in re.findall(r"^\s*#?\s*-\s+((?:\.\./)+components/[\w.-]+)\s*$", text, re.M):
        if (directory / relative / "kustomization.yaml").is_file():
            found.append(relative)
    return found


def variant_name(directory, components=()):
    name = str(directory.relative_to(KUBERNETES)).replace("/", "_")
    return "+".join([name] + [pathlib.PurePath(c).name for c in components])


def is_core(api_version):
    group = api_version.split("/")[0] if "/" in api_version else ""
    return "." not in group or group.endswith(".k8s.io")


def kustomize(kubectl, directory, out, name):
    result = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True,
                            text=True, check=False)
    if result.returncode != 0:
        problem(directory.relative_to(ROOT), f"kubectl kustomize failed:\n{result.stderr}")
        return
    documents = [d for d in yaml.safe_load_all(result.stdout) if d]
    (out / f"{name}.yaml").write_text(result.stdout)
    # Core API groups have no dot ("v1", "apps/v1") or end in .k8s.io; the schemas of
    # others (cert-manager's Certificate) are not in kubernetes-validate.
    core = [d for d in documents if is_core(d["apiVersion"])]
    (out / f"{name}.core.yaml").write_text(yaml.safe_dump_all(core, sort_keys=False))
    print(f"    {name}: {len(documents)} resources ({len(documents) - len(core)} outside core APIs)")


def render(kubectl, out):
    out = pathlib.Path(out)
    for directory, kustomization in kustomizations():
        check_named_files(directory, kustomization)
        if kustomization.get("kind", "Kustomization") != "Kustomization":
            continue  # a Component renders only inside an overlay
        kustomize(kubectl, directory, out, variant_name(directory))
        optional = [c for c in mentioned_components(directory)
                    if c not in (kustomization.get("components") or [])]
        if optional:
            # Kustomize refuses absolute paths and roots above the kustomization, so
            # the throw-away kustomization names the overlay by a relative path.
            with tempfile.TemporaryDirectory() as scratch:
                relative = os.path.relpath(directory, scratch)
                enabled = {"resources": [relative],
                           "components": [os.path.relpath(directory / c, scratch)
                                          for c in optional]}
                pathlib.Path(scratch, "kustomization.yaml").write_text(yaml.safe_dump(enabled))
                kustomize(kubectl, pathlib.Path(scratch), out, variant_name(directory, optional))


def selects(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def check_pod(where, pod, by_kind, claims=()):
    """A workload's pod template: images, probes, and everything it references. Returns
    the Secrets it mounts as volumes."""
    mounted_secrets = set()
    volumes = {v["name"]: v for v in pod["spec"].get("volumes", [])}
    volume_names = set(volumes) | set(claims)
    for volume in volumes.values():
        if "secret" in volume:
            mounted_secrets.add(volume["secret"]["secretName"])
            for item in volume["secret"].get("items", []):
                check_secret_key(where, volume["secret"]["secretName"], item["key"], by_kind)
        if "configMap" in volume and volume["configMap"]["name"] not in by_kind.get("ConfigMap", {}):
            problem(where, f"volume {volume['name']}: no ConfigMap {volume['configMap']['name']}")
    for container in pod["spec"]["containers"]:
        cwhere = f"{where} container {container['name']}"
        # What runs must be a release: a version tag or a digest, never `latest`
        # (which moves) or no tag at all (which means latest).
        image = container["image"]
        name_part, _, tag = image.split("@")[0].rpartition(":")
        if "@sha256:" not in image and ("/" in tag or not name_part or tag == "latest"):
            problem(cwhere, f"image {image}: give a version tag or a digest, never latest")
        ports = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
        for probe_name in PROBES:
            probe = container.get(probe_name)
            if probe is None:
                continue
            handlers = [h for h in HANDLERS if h in probe]
            if len(handlers) != 1:
                problem(cwhere, f"{probe_name} has {len(handlers)} handlers {handlers}: "
                                "exactly one is allowed")
            for handler in handlers:
                port = probe[handler].get("port") if isinstance(probe[handler], dict) else None
                if isinstance(port, str) and port not in ports:
                    problem(cwhere, f"{probe_name} names port {port!r}, not a container port")
                if isinstance(port, int) and port not in ports.values():
                    problem(cwhere, f"{probe_name} port {port} is not a container port")
        for source in container.get("envFrom", []):
            ref = source.get("configMapRef", {}).get("name")
            if ref and ref not in by_kind.get("ConfigMap", {}):
                problem(cwhere, f"envFrom names ConfigMap {ref}, which is not rendered")
        for variable in container.get("env", []):
            ref = (variable.get("valueFrom") or {}).get("secretKeyRef")
            if ref:
                check_secret_key(cwhere, ref["name"], ref["key"], by_kind)
        for mount in container.get("volumeMounts", []):
            if mount["name"] not in volume_names:
                problem(cwhere, f"volumeMount {mount['name']} has no volume")
    return mounted_secrets


def check_secret_key(where, secret, key, by_kind):
    """A key a pod reads from a Secret this variant renders is one the Secret has."""
    rendered = by_kind.get("Secret", {}).get(secret)
    if rendered is not None:
        keys = set(rendered.get("stringData") or {}) | set(rendered.get("data") or {})
        if key not in keys:
            problem(where, f"reads key {key} of Secret {secret}, which has only {sorted(keys)}")


def check_variant(path):
    name = path.name.removesuffix(".yaml")
    documents = [d for d in yaml.safe_load_all(path.read_text()) if d]
    by_kind = {}
    for d in documents:
        by_kind.setdefault(d["kind"], {})[d["metadata"]["name"]] = d
    secrets = set(by_kind.get("Secret", {}))
    certificates = {c["spec"]["secretName"] for c in by_kind.get("Certificate", {}).values()}
    mounted_secrets = set()
    if not by_kind.get("Deployment"):
        problem(name, "no Deployment rendered")
    # Every workload's pods: (where, labels, container port names).
    pods = []
    for kind in ("Deployment", "StatefulSet"):
        for workload in by_kind.get(kind, {}).values():
            where = f"{name}: {kind} {workload['metadata']['name']}"
            pod = workload["spec"]["template"]
            labels = pod["metadata"].get("labels", {})
            if not selects(workload["spec"]["selector"].get("matchLabels"), labels):
                problem(where, "its selector does not select its own pods")
            claims = [c["metadata"]["name"] for c in workload["spec"].get("volumeClaimTemplates", [])]
            if kind == "StatefulSet" and workload["spec"].get("serviceName") not in by_kind.get("Service", {}):
                problem(where, f"serviceName {workload['spec'].get('serviceName')} is not a rendered Service")
            mounted_secrets |= check_pod(where, pod, by_kind, claims)
            port_names = {p.get("name") for c in pod["spec"]["containers"] for p in c.get("ports", [])}
            pods.append((where, labels, port_names))
    # Each selector selects some workload's pods (one that selects none is a typo that
    # leaves a Service without endpoints, or a NetworkPolicy guarding nothing).
    for kind in ("Service", "PodDisruptionBudget", "NetworkPolicy"):
        for other in by_kind.get(kind, {}).values():
            spec = other["spec"]
            selector = spec.get("selector") if kind == "Service" else \
                (spec.get("selector") or spec.get("podSelector") or {}).get("matchLabels")
            selected = [p for p in pods if selects(selector, p[1])]
            if not selected:
                problem(f"{name}: {kind} {other['metadata']['name']}",
                        f"selector {selector} selects the pods of no workload")
            if kind != "Service":
                continue
            names = set().union(*(p[2] for p in selected)) if selected else set()
            for port in spec["ports"]:
                target = port.get("targetPort")
                if isinstance(target, str) and target not in names:
                    problem(f"{name}: Service {other['metadata']['name']}",
                            f"targetPort {target!r} is no container port name of the pods it selects")
    for hpa in by_kind.get("HorizontalPodAutoscaler", {}).values():
        target = hpa["spec"]["scaleTargetRef"]
        if target["name"] not in by_kind.get(target["kind"], {}):
            problem(f"{name}: HorizontalPodAutoscaler", f"scales {target}, which is not rendered")
    check_valkey_url(name, by_kind)
    # A Secret the pods mount comes from this variant (a Secret, or a Certificate that
    # cert-manager turns into one), or from the operator: allowed only in a variant
    # that leaves an optional component out, and said.
    external = mounted_secrets - secrets - certificates
    # render wrote <name>+<component>.yaml beside this one: an optional component is off.
    optional_left_out = "+" not in name and any(path.parent.glob(f"{name}+*.yaml"))
    for secret in sorted(external):
        if optional_left_out:
            print(f"    {name}: Secret {secret} is created by the operator (not rendered)")
        else:
            problem(name, f"pods mount Secret {secret}, which nothing renders")
    for secret in sorted(certificates - mounted_secrets):
        problem(name, f"a Certificate writes Secret {secret}, which no pod mounts")
    return {d["kind"] for d in documents}


def check_valkey_url(name, by_kind):
    """The Valkey the service's ConfigMap names: a Service of this variant serving that
    port, or one outside it (said)."""
    for configmap in by_kind.get("ConfigMap", {}).values():
        url = (configmap.get("data") or {}).get("VALKEY_URL")
        if not url:
            continue
        for seed in url.split(","):
            address = urllib.parse.urlsplit(seed.strip())
            host, port = address.hostname, address.port or 6379
            service = by_kind.get("Service", {}).get(host)
            if service is None:
                print(f"    {name}: VALKEY_URL names {host}:{port}, outside this variant")
            elif port not in {p["port"] for p in service["spec"]["ports"]}:
                problem(f"{name}: ConfigMap {configmap['metadata']['name']}",
                        f"VALKEY_URL port {port} is not a port of Service {host}")


def check(out):
    variants = sorted(p for p in pathlib.Path(out).glob("*.yaml")
                      if not p.name.endswith(".core.yaml"))
    if not variants:
        problem(out, "nothing rendered")
    kinds = {path.name.removesuffix(".yaml"): check_variant(path) for path in variants}
    # The base is whole on its own: it renders and passes without any optional component
    # (an external Valkey, no cert-manager), and each component is rendered in some
    # variant (an overlay that enables it, or one that names it commented out).
    if "base" not in kinds:
        problem(out, "the base was not rendered on its own")
    elif "StatefulSet" in kinds["base"]:
        problem("base", "renders a StatefulSet: a component's resources leaked into the base")
    components = (KUBERNETES / "components").glob("*/kustomization.yaml")
    for component in sorted(p.parent.resolve() for p in components):
        enabled = any(component == (directory / c).resolve()
                      for directory, kustomization in kustomizations()
                      if kustomization.get("kind", "Kustomization") == "Kustomization"
                      for c in kustomization.get("components") or [])
        used = enabled or any(component.name in n.split("+")[1:] for n in kinds)
        if not used:
            problem(component.relative_to(ROOT), "no rendered variant enables this component")


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "render":
        render(sys.argv[2], sys.argv[3])
    elif len(sys.argv) == 3 and sys.argv[1] == "check":
        check(sys.argv[2])
    else:
        sys.exit(__doc__)
    for line in problems:
        print(line)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
