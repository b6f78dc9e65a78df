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
rendered variants: every probe has exactly one handler and names a port the container
has, what a pod references (ConfigMaps, Secrets, ports) is rendered too, and selectors
select the Deployment's pods, images carry a version tag or a digest (never latest).
Exits non-zero on any problem.
"""

import os
import pathlib
import re
import subprocess
import sys
import tempfile

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
    return all(labels.get(k) == v for k, v in (selector or {}).items())


def check_variant(path):
    name = path.name.removesuffix(".yaml")
    documents = [d for d in yaml.safe_load_all(path.read_text()) if d]
    by_kind = {}
    for d in documents:
        by_kind.setdefault(d["kind"], {})[d["metadata"]["name"]] = d
    secrets = set(by_kind.get("Secret", {}))
    certificates = {c["spec"]["secretName"] for c in by_kind.get("Certificate", {}).values()}
    mounted_secrets = set()
    deployments = by_kind.get("Deployment", {})
    if not deployments:
        problem(name, "no Deployment rendered")
    for deployment in deployments.values():
        where = f"{name}: Deployment {deployment['metadata']['name']}"
        pod = deployment["spec"]["template"]
        labels = pod["metadata"].get("labels", {})
        if not selects(deployment["spec"]["selector"].get("matchLabels"), labels):
            problem(where, "its selector does not select its own pods")
        volumes = {v["name"]: v for v in pod["spec"].get("volumes", [])}
        for volume in volumes.values():
            if "secret" in volume:
                mounted_secrets.add(volume["secret"]["secretName"])
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
            for mount in container.get("volumeMounts", []):
                if mount["name"] not in volumes:
                    problem(cwhere, f"volumeMount {mount['name']} has no volume")
        for kind in ("Service", "PodDisruptionBudget", "NetworkPolicy"):
            for other in by_kind.get(kind, {}).values():
                spec = other["spec"]
                selector = spec.get("selector") if kind == "Service" else \
                    (spec.get("selector") or spec.get("podSelector") or {}).get("matchLabels")
                if not selects(selector, labels):
                    problem(f"{name}: {kind} {other['metadata']['name']}",
                            f"selector {selector} does not select the Deployment's pods")
        for service in by_kind.get("Service", {}).values():
            names = {p.get("name") for c in pod["spec"]["containers"] for p in c.get("ports", [])}
            for port in service["spec"]["ports"]:
                target = port.get("targetPort")
                if isinstance(target, str) and target not in names:
                    problem(f"{name}: Service {service['metadata']['name']}",
                            f"targetPort {target!r} is no container port name")
    for hpa in by_kind.get("HorizontalPodAutoscaler", {}).values():
        target = hpa["spec"]["scaleTargetRef"]
        if target["name"] not in by_kind.get(target["kind"], {}):
            problem(f"{name}: HorizontalPodAutoscaler", f"scales {target}, which is not rendered")
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


def check(out):
    variants = sorted(p for p in pathlib.Path(out).glob("*.yaml")
                      if not p.name.endswith(".core.yaml"))
    if not variants:
        problem(out, "nothing rendered")
    for path in variants:
        check_variant(path)


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
