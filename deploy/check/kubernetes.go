// The Kubernetes manifests (deploy/kubernetes): every object decodes strictly into the
// Kubernetes API types (an unknown field, a wrong type or a duplicate key is an error, as the
// API server's strict field validation would say), names and labels are valid, and the objects
// agree with each other: selectors select their pods, probes and Services name ports that
// exist, every ConfigMap, Secret and key a pod refers to is in the set, kustomization.yaml
// lists every file, and the router is a static group member under its pod name.
package main

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer/json"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/validation"
	"sigs.k8s.io/yaml"
)

type set struct {
	configMaps  map[string]map[string]string
	secrets     map[string]map[string]bool
	pods        []pod
	services    []*corev1.Service
	budgets     []*policyv1.PodDisruptionBudget
	deployments []*appsv1.Deployment
	problems    []string
}

type pod struct {
	owner    string
	labels   map[string]string
	spec     *corev1.PodSpec
	selector *metav1.LabelSelector
}

func (s *set) fail(format string, args ...any) {
	s.problems = append(s.problems, fmt.Sprintf(format, args...))
}

// CheckKubernetes validates every manifest in dir and returns the objects it read and the
// problems found.
func CheckKubernetes(dir string) ([]string, []string) {
	scheme := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{corev1.AddToScheme, appsv1.AddToScheme, batchv1.AddToScheme, policyv1.AddToScheme} {
		if err := add(scheme); err != nil {
			panic(err)
		}
	}
	decoder := json.NewSerializerWithOptions(json.DefaultMetaFactory, scheme, scheme, json.SerializerOptions{Yaml: true, Strict: true})
	s := &set{configMaps: map[string]map[string]string{}, secrets: map[string]map[string]bool{}}
	var objects []string
	files, _ := filepath.Glob(filepath.Join(dir, "*.yaml"))
	sort.Strings(files)
	var listed []string
	for _, file := range files {
		raw, err := os.ReadFile(file)
		if err != nil {
			s.fail("%s: %v", file, err)
			continue
		}
		base := filepath.Base(file)
		if base == "kustomization.yaml" {
			listed = s.kustomization(file, raw)
			continue
		}
		for i, doc := range strings.Split(string(raw), "\n---") {
			if strings.TrimSpace(stripComments(doc)) == "" {
				continue
			}
			obj, gvk, err := decoder.Decode([]byte(doc), nil, nil)
			if err != nil {
				s.fail("%s document %d: %v", base, i+1, err)
				continue
			}
			meta, ok := obj.(metav1.Object)
			if !ok {
				s.fail("%s document %d: %s has no metadata", base, i+1, gvk.Kind)
				continue
			}
			where := fmt.Sprintf("%s %s/%s", base, gvk.Kind, meta.GetName())
			objects = append(objects, where)
			for _, msg := range validation.IsDNS1123Subdomain(meta.GetName()) {
				s.fail("%s: name: %s", where, msg)
			}
			s.add(where, obj)
		}
	}
	s.crossCheck()
	if listed != nil {
		s.listedFiles(dir, files, listed)
	} else {
		s.fail("kustomization.yaml is missing")
	}
	return objects, s.problems
}

func stripComments(doc string) string {
	var out []string
	for _, l := range strings.Split(doc, "\n") {
		if !strings.HasPrefix(strings.TrimSpace(l), "#") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

func (s *set) kustomization(file string, raw []byte) []string {
	var k struct {
		APIVersion string   `json:"apiVersion"`
		Kind       string   `json:"kind"`
		Resources  []string `json:"resources"`
		Labels     []struct {
			Pairs map[string]string `json:"pairs"`
		} `json:"labels"`
		Images []struct {
			Name    string `json:"name"`
			NewName string `json:"newName"`
			NewTag  string `json:"newTag"`
		} `json:"images"`
	}
	if err := yaml.UnmarshalStrict(raw, &k); err != nil {
		s.fail("kustomization.yaml: %v", err)
		return []string{}
	}
	if k.Kind != "Kustomization" || k.APIVersion != "kustomize.config.k8s.io/v1beta1" {
		s.fail("kustomization.yaml: kind %q apiVersion %q", k.Kind, k.APIVersion)
	}
	return k.Resources
}

func (s *set) listedFiles(dir string, files, listed []string) {
	present := map[string]bool{}
	for _, f := range files {
		present[filepath.Base(f)] = true
	}
	seen := map[string]bool{"kustomization.yaml": true}
	for _, r := range listed {
		if !present[r] {
			s.fail("kustomization.yaml lists %s, which is not in %s", r, dir)
		}
		seen[r] = true
	}
	for f := range present {
		if !seen[f] {
			s.fail("%s is not listed in kustomization.yaml", f)
		}
	}
}

func (s *set) add(where string, obj runtime.Object) {
	switch o := obj.(type) {
	case *corev1.ConfigMap:
		for k := range o.Data {
			for _, msg := range validation.IsConfigMapKey(k) {
				s.fail("%s: key %s: %s", where, k, msg)
			}
		}
		s.configMaps[o.Name] = o.Data
	case *corev1.Secret:
		keys := map[string]bool{}
		for k := range o.StringData {
			keys[k] = true
		}
		for k := range o.Data {
			keys[k] = true
		}
		s.secrets[o.Name] = keys
	case *appsv1.Deployment:
		s.deployments = append(s.deployments, o)
		s.pods = append(s.pods, pod{where, o.Spec.Template.Labels, &o.Spec.Template.Spec, o.Spec.Selector})
	case *batchv1.Job:
		s.pods = append(s.pods, pod{where, o.Spec.Template.Labels, &o.Spec.Template.Spec, nil})
		if o.Spec.Template.Spec.RestartPolicy != corev1.RestartPolicyOnFailure && o.Spec.Template.Spec.RestartPolicy != corev1.RestartPolicyNever {
			s.fail("%s: a Job's restartPolicy must be OnFailure or Never", where)
		}
	case *corev1.Service:
		s.services = append(s.services, o)
	case *policyv1.PodDisruptionBudget:
		s.budgets = append(s.budgets, o)
	default:
		s.fail("%s: kind not expected here", where)
	}
}

func (s *set) crossCheck() {
	for _, p := range s.pods {
		if p.selector != nil {
			sel, err := metav1.LabelSelectorAsSelector(p.selector)
			if err != nil || sel.Empty() || !sel.Matches(labels.Set(p.labels)) {
				s.fail("%s: spec.selector does not select the pod template's labels %v", p.owner, p.labels)
			}
		}
		for k, v := range p.labels {
			for _, msg := range validation.IsQualifiedName(k) {
				s.fail("%s: label %s: %s", p.owner, k, msg)
			}
			for _, msg := range validation.IsValidLabelValue(v) {
				s.fail("%s: label %s value: %s", p.owner, k, msg)
			}
		}
		s.podSpec(p)
	}
	for _, svc := range s.services {
		var target *pod
		for i := range s.pods {
			if len(svc.Spec.Selector) > 0 && labels.SelectorFromSet(svc.Spec.Selector).Matches(labels.Set(s.pods[i].labels)) {
				target = &s.pods[i]
			}
		}
		if target == nil {
			s.fail("Service %s selects no pod in the set", svc.Name)
			continue
		}
		for _, port := range svc.Spec.Ports {
			if !hasPort(target.spec, port.TargetPort) {
				s.fail("Service %s: targetPort %s is not a port of %s", svc.Name, port.TargetPort.String(), target.owner)
			}
		}
	}
	for _, b := range s.budgets {
		sel, err := metav1.LabelSelectorAsSelector(b.Spec.Selector)
		matched := false
		for _, p := range s.pods {
			if err == nil && !sel.Empty() && sel.Matches(labels.Set(p.labels)) {
				matched = true
			}
		}
		if !matched {
			s.fail("PodDisruptionBudget %s selects no pod in the set", b.Name)
		}
	}
	for _, d := range s.deployments {
		if d.Name == "taskfactory-router" {
			s.routerIsStaticMember(d)
		}
	}
}

func (s *set) podSpec(p pod) {
	for _, v := range p.spec.Volumes {
		if v.Secret != nil && !isTrue(v.Secret.Optional) && s.secrets[v.Secret.SecretName] == nil {
			s.fail("%s: volume %s: Secret %s is not in the set", p.owner, v.Name, v.Secret.SecretName)
		}
	}
	shutdown, _ := strconv.Atoi(s.configValue("TF_SHUTDOWN_TIMEOUT"))
	if p.selector != nil && p.spec.TerminationGracePeriodSeconds != nil && int(*p.spec.TerminationGracePeriodSeconds) <= shutdown {
		s.fail("%s: terminationGracePeriodSeconds %d must exceed TF_SHUTDOWN_TIMEOUT %d, or the drain is cut short", p.owner, *p.spec.TerminationGracePeriodSeconds, shutdown)
	}
	if p.spec.SecurityContext == nil || !isTrue(p.spec.SecurityContext.RunAsNonRoot) {
		s.fail("%s: pods run as non-root (securityContext.runAsNonRoot)", p.owner)
	}
	for _, c := range p.spec.Containers {
		where := p.owner + " container " + c.Name
		if c.Image == "" {
			s.fail("%s: no image", where)
		}
		if c.Resources.Requests.Memory().IsZero() || c.Resources.Limits.Memory().IsZero() {
			s.fail("%s: memory request and limit are required", where)
		}
		for _, from := range c.EnvFrom {
			if from.ConfigMapRef != nil && s.configMaps[from.ConfigMapRef.Name] == nil {
				s.fail("%s: envFrom ConfigMap %s is not in the set", where, from.ConfigMapRef.Name)
			}
			if from.SecretRef != nil && s.secrets[from.SecretRef.Name] == nil {
				s.fail("%s: envFrom Secret %s is not in the set", where, from.SecretRef.Name)
			}
		}
		for _, e := range c.Env {
			if e.ValueFrom == nil {
				continue
			}
			if r := e.ValueFrom.ConfigMapKeyRef; r != nil && !isTrue(r.Optional) && !hasKey(s.configMaps[r.Name], r.Key) {
				s.fail("%s: env %s: ConfigMap %s has no key %s", where, e.Name, r.Name, r.Key)
			}
			if r := e.ValueFrom.SecretKeyRef; r != nil && !isTrue(r.Optional) && !s.secrets[r.Name][r.Key] {
				s.fail("%s: env %s: Secret %s has no key %s", where, e.Name, r.Name, r.Key)
			}
		}
		if p.selector != nil {
			for name, probe := range map[string]*corev1.Probe{"readinessProbe": c.ReadinessProbe, "livenessProbe": c.LivenessProbe} {
				if probe == nil || probe.HTTPGet == nil {
					s.fail("%s: %s (HTTP) is required", where, name)
				} else if !hasPort(p.spec, probe.HTTPGet.Port) {
					s.fail("%s: %s port %s is not a container port", where, name, probe.HTTPGet.Port.String())
				}
			}
		}
		if sc := c.SecurityContext; sc == nil || !isTrue(sc.ReadOnlyRootFilesystem) || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
			s.fail("%s: readOnlyRootFilesystem and no privilege escalation are required", where)
		}
	}
}

func (s *set) routerIsStaticMember(d *appsv1.Deployment) {
	for _, c := range d.Spec.Template.Spec.Containers {
		for _, e := range c.Env {
			if e.Name == "TF_ROUTER_INSTANCE_ID" && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "metadata.name" {
				return
			}
		}
	}
	s.fail("Deployment taskfactory-router: TF_ROUTER_INSTANCE_ID must come from the pod name (fieldRef metadata.name)")
}

// configValue is a setting's value in any ConfigMap of the set.
func (s *set) configValue(key string) string {
	for _, data := range s.configMaps {
		if v, ok := data[key]; ok {
			return v
		}
	}
	return ""
}

func hasKey(data map[string]string, key string) bool {
	_, ok := data[key]
	return ok
}

func hasPort(spec *corev1.PodSpec, port intstr.IntOrString) bool {
	for _, c := range spec.Containers {
		for _, p := range c.Ports {
			if (port.Type == intstr.String && p.Name == port.StrVal) || (port.Type == intstr.Int && p.ContainerPort == port.IntVal) {
				return true
			}
		}
	}
	return false
}

func isTrue(b *bool) bool { return b != nil && *b }
