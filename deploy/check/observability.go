// The Prometheus alert rules and the Grafana dashboard.

package main

import (
	"encoding/json"
	"fmt"
	"os"

	"github.com/grafana/grafana-foundation-sdk/go/cog"
	"github.com/grafana/grafana-foundation-sdk/go/dashboard"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/parser"
)

// CheckRules parses the rule file as Prometheus does when it loads it: unknown fields,
// PromQL that does not parse, bad durations, labels and annotation templates are problems.
func CheckRules(file string) ([]string, []string) {
	groups, errs := rulefmt.ParseFile(file, false, model.UTF8Validation, parser.NewParser(parser.Options{}), nil)
	var problems []string
	for _, e := range errs {
		problems = append(problems, e.Error())
	}
	var objects []string
	if groups != nil {
		for _, g := range groups.Groups {
			for _, r := range g.Rules {
				name := r.Alert
				if name == "" {
					name = "record " + r.Record
				}
				objects = append(objects, fmt.Sprintf("rule %s/%s", g.Name, name))
			}
		}
	}
	if len(objects) == 0 && len(problems) == 0 {
		problems = append(problems, file+": no rules")
	}
	return objects, problems
}

// CheckDashboard decodes the dashboard strictly into the schema's types (unknown or
// mistyped fields, missing required ones), runs the schema's validation, and parses every
// panel's Prometheus query.
func CheckDashboard(file string) ([]string, []string) {
	raw, err := os.ReadFile(file)
	if err != nil {
		return nil, []string{err.Error()}
	}
	var problems []string
	var d dashboard.Dashboard
	// The SDK returns an empty BuildErrors, not nil, when nothing is wrong.
	if err := d.UnmarshalJSONStrict(raw); err != nil {
		if be, ok := err.(cog.BuildErrors); !ok || len(be) > 0 {
			problems = append(problems, fmt.Sprintf("%s: does not match the dashboard schema: %v", file, err))
		}
	}
	if err := d.Validate(); err != nil {
		if be, ok := err.(cog.BuildErrors); !ok || len(be) > 0 {
			problems = append(problems, fmt.Sprintf("%s: %v", file, err))
		}
	}
	// The queries, read generically: the schema leaves a panel's targets to its datasource.
	var loose struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				RefID string `json:"refId"`
				Expr  string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(raw, &loose); err != nil {
		return nil, append(problems, fmt.Sprintf("%s: %v", file, err))
	}
	var objects []string
	promql := parser.NewParser(parser.Options{})
	for _, p := range loose.Panels {
		objects = append(objects, fmt.Sprintf("panel %q", p.Title))
		for _, t := range p.Targets {
			if t.Expr == "" {
				problems = append(problems, fmt.Sprintf("%s: panel %q query %s has no expr", file, p.Title, t.RefID))
				continue
			}
			if _, err := promql.ParseExpr(t.Expr); err != nil {
				problems = append(problems, fmt.Sprintf("%s: panel %q query %s: %v", file, p.Title, t.RefID, err))
			}
		}
	}
	return objects, problems
}
