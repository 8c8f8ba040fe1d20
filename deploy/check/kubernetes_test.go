package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// copyManifests copies the real manifests into a temp dir, with edits applied to one file.
func copyManifests(t *testing.T, file string, edit func(string) string) string {
	t.Helper()
	dir := t.TempDir()
	files, _ := filepath.Glob("../kubernetes/*.yaml")
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		text := string(raw)
		if filepath.Base(f) == file {
			edited := edit(text)
			if edited == text {
				t.Fatalf("the edit of %s changed nothing", file)
			}
			text = edited
		}
		if err := os.WriteFile(filepath.Join(dir, filepath.Base(f)), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestTheCommittedManifestsAreValid(t *testing.T) {
	objects, problems := CheckKubernetes("../kubernetes")
	if len(problems) > 0 {
		t.Fatalf("problems: %v", problems)
	}
	if len(objects) < 9 {
		t.Fatalf("only %d objects read: %v", len(objects), objects)
	}
}

func TestBrokenManifestsAreNamed(t *testing.T) {
	cases := []struct {
		file, old, new, want string
	}{
		{"router.yaml", "terminationGracePeriodSeconds: 45", "terminationGracePeriodSecond: 45", `unknown field "spec.template.spec.terminationGracePeriodSecond"`},
		{"router.yaml", "replicas: 2", "replicas: two", "router.yaml document 1"},
		{"worker.yaml", "      app.kubernetes.io/name: taskfactory-worker\n  template", "      app.kubernetes.io/name: worker\n  template", "Deployment/taskfactory-worker: spec.selector does not select"},
		{"router.yaml", "fieldPath: metadata.name", "fieldPath: metadata.uid", "TF_ROUTER_INSTANCE_ID must come from the pod name"},
		{"worker.yaml", "terminationGracePeriodSeconds: 45", "terminationGracePeriodSeconds: 30", "must exceed TF_SHUTDOWN_TIMEOUT 30"},
		{"api.yaml", "targetPort: http", "targetPort: web", "Service taskfactory-api: targetPort web is not a port"},
		{"api.yaml", "path: /readyz, port: http", "path: /readyz, port: 9999", "readinessProbe port 9999 is not a container port"},
		{"router.yaml", "configMapRef: {name: taskfactory-config}", "configMapRef: {name: taskfactory-settings}", "envFrom ConfigMap taskfactory-settings is not in the set"},
		{"kustomization.yaml", "  - api.yaml\n", "", "api.yaml is not listed in kustomization.yaml"},
		{"config.yaml", "name: taskfactory-config", "name: Taskfactory_Config", "name: a lowercase RFC 1123 subdomain"},
		{"worker.yaml", "readOnlyRootFilesystem: true", "readOnlyRootFilesystem: false", "readOnlyRootFilesystem and no privilege escalation are required"},
	}
	for _, c := range cases {
		dir := copyManifests(t, c.file, func(s string) string { return strings.Replace(s, c.old, c.new, 1) })
		_, problems := CheckKubernetes(dir)
		joined := strings.Join(problems, "\n")
		if !strings.Contains(joined, c.want) {
			t.Errorf("%s: %q -> %q: want a problem containing %q, got:\n%s", c.file, c.old, c.new, c.want, joined)
		}
	}
}
