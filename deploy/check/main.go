// Command check validates the deployment files offline, with the libraries the real tools use:
// the Kubernetes manifests against the Kubernetes API types, the Prometheus alert rules with
// Prometheus's own rule-file parser (what `promtool check rules` runs), and the Grafana
// dashboard against the dashboard schema (Grafana's foundation SDK, generated from it) with
// every panel query parsed as PromQL.
//
// Usage: go run . [deploy-dir]   (deploy-dir defaults to "..", the repository's deploy/)
package main

import (
	"fmt"
	"os"
	"path/filepath"
)

func main() {
	dir := ".."
	if len(os.Args) > 1 {
		if os.Args[1] == "-h" || os.Args[1] == "--help" {
			fmt.Println("usage: check [deploy-dir]\n\nValidates deploy-dir/kubernetes, deploy-dir/prometheus/alerts.yml and\ndeploy-dir/grafana/taskfactory.json offline (deploy-dir defaults to ..).")
			return
		}
		dir = os.Args[1]
	}
	var problems []string
	report := func(what string, objects, found []string) {
		for _, o := range objects {
			fmt.Printf("ok   %s\n", o)
		}
		for _, p := range found {
			fmt.Fprintf(os.Stderr, "FAIL %s\n", p)
		}
		fmt.Printf("%s: %d checked, %d problems\n", what, len(objects), len(found))
		problems = append(problems, found...)
	}
	objects, found := CheckKubernetes(filepath.Join(dir, "kubernetes"))
	report("kubernetes", objects, found)
	objects, found = CheckRules(filepath.Join(dir, "prometheus", "alerts.yml"))
	report("prometheus rules", objects, found)
	objects, found = CheckDashboard(filepath.Join(dir, "grafana", "taskfactory.json"))
	report("grafana dashboard", objects, found)
	if len(problems) > 0 {
		os.Exit(1)
	}
}
