package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func edited(t *testing.T, file, old, new string) string {
	t.Helper()
	raw, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	text := strings.Replace(string(raw), old, new, 1)
	if text == string(raw) {
		t.Fatalf("%q is not in %s", old, file)
	}
	out := filepath.Join(t.TempDir(), filepath.Base(file))
	if err := os.WriteFile(out, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestTheCommittedRulesAndDashboardAreValid(t *testing.T) {
	for name, check := range map[string]func() ([]string, []string){
		"rules":     func() ([]string, []string) { return CheckRules("../prometheus/alerts.yml") },
		"dashboard": func() ([]string, []string) { return CheckDashboard("../grafana/taskfactory.json") },
	} {
		objects, problems := check()
		if len(problems) > 0 || len(objects) < 5 {
			t.Errorf("%s: %d objects, problems: %v", name, len(objects), problems)
		}
	}
}

func TestBrokenRulesAndDashboardsAreNamed(t *testing.T) {
	rules := "../prometheus/alerts.yml"
	dash := "../grafana/taskfactory.json"
	cases := []struct {
		check          func(string) ([]string, []string)
		file, old, new string
		want           string
	}{
		{CheckRules, rules, "expr:", "expresion:", "field expresion not found"},
		{CheckRules, rules, "rate(", "rate((", "parse error"},
		{CheckRules, rules, "for: ", "for: soon #", "not a valid duration"},
		{CheckDashboard, dash, `"schemaVersion"`, `"schemaVersio"`, "does not match the dashboard schema"},
		{CheckDashboard, dash, `"annotations"`, `"annotationz"`, "annotations: required field is missing"},
		{CheckDashboard, dash, `rate(tf_worker_run_duration_seconds_bucket[5m])`, `rate(tf_worker_run_duration_seconds_bucket[5m]`, "parse error"},
	}
	for _, c := range cases {
		_, problems := c.check(edited(t, c.file, c.old, c.new))
		joined := strings.Join(problems, "\n")
		if !strings.Contains(joined, c.want) {
			t.Errorf("%s: %q -> %q: want a problem containing %q, got:\n%s", filepath.Base(c.file), c.old, c.new, c.want, joined)
		}
	}
}
