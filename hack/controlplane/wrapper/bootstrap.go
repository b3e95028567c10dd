// The default RBAC policy (--bootstrap-policy, ../bootstrap-policy.yaml), as
// kube-apiserver's rbac/bootstrap-roles post-start hook provides it: the roles
// and bindings every cluster has. Those the stand-in CRDs can store are created
// once the CRDs are established, if missing. A custom resource's name must be a
// DNS subdomain, so the defaults named system:... cannot be stored: they are
// kept here, read-only, and the authoriser and the aggregation controller see
// them beside the stored objects.

package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/util/yaml"
	rbacclient "k8s.io/client-go/kubernetes/typed/rbac/v1"
	clientscheme "k8s.io/client-go/kubernetes/scheme"
)

// defaultPolicy is the parsed policy file.
type defaultPolicy struct {
	// builtIn are the roles and bindings whose names cannot be stored.
	builtInRoles    map[string]*rbacv1.ClusterRole
	builtInBindings []*rbacv1.ClusterRoleBinding
	// stored are created through the API if missing.
	storedRoles    []*rbacv1.ClusterRole
	storedBindings []*rbacv1.ClusterRoleBinding
}

// loadDefaultPolicy reads a multi-document YAML file of ClusterRoles and
// ClusterRoleBindings; anything else in it is an error.
func loadDefaultPolicy(path string) (*defaultPolicy, error) {
	p := &defaultPolicy{builtInRoles: map[string]*rbacv1.ClusterRole{}}
	if path == "" {
		return p, nil
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("--bootstrap-policy: %w", err)
	}
	defer f.Close()
	reader := yaml.NewYAMLReader(bufio.NewReader(f))
	for i := 0; ; i++ {
		doc, err := reader.Read()
		if errors.Is(err, io.EOF) {
			return p, nil
		}
		if err != nil {
			return nil, fmt.Errorf("--bootstrap-policy %s: %w", path, err)
		}
		json, err := yaml.ToJSON(doc)
		if err != nil || string(json) == "null" {
			if err != nil {
				return nil, fmt.Errorf("--bootstrap-policy %s, document %d: %w", path, i, err)
			}
			continue // an empty document
		}
		obj, _, err := clientscheme.Codecs.UniversalDeserializer().Decode(json, nil, nil)
		if err != nil {
			return nil, fmt.Errorf("--bootstrap-policy %s, document %d: %w", path, i, err)
		}
		switch o := obj.(type) {
		case *rbacv1.ClusterRole:
			if storable(o.Name) {
				p.storedRoles = append(p.storedRoles, o)
			} else {
				p.builtInRoles[o.Name] = o
			}
		case *rbacv1.ClusterRoleBinding:
			if storable(o.Name) {
				p.storedBindings = append(p.storedBindings, o)
			} else {
				p.builtInBindings = append(p.builtInBindings, o)
			}
		default:
			return nil, fmt.Errorf("--bootstrap-policy %s, document %d: a %T, not a ClusterRole or ClusterRoleBinding", path, i, obj)
		}
	}
}

// storable: the CRD handler accepts the name (a DNS subdomain, so no ':').
func storable(name string) bool { return len(validation.IsDNS1123Subdomain(name)) == 0 }

// builtInMatching are the built-in roles a label selector matches.
func (p *defaultPolicy) builtInMatching(selector labels.Selector) []*rbacv1.ClusterRole {
	var out []*rbacv1.ClusterRole
	for _, role := range p.builtInRoles {
		if selector.Matches(labels.Set(role.Labels)) {
			out = append(out, role)
		}
	}
	return out
}

// createMissing creates the storable defaults that do not exist; existing ones
// are left as they are (kube-apiserver reconciles them; here the harness owns them).
func (p *defaultPolicy) createMissing(ctx context.Context, client rbacclient.RbacV1Interface) error {
	for _, role := range p.storedRoles {
		if _, err := client.ClusterRoles().Create(ctx, role.DeepCopy(), metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("creating the default ClusterRole %q: %w", role.Name, err)
		}
	}
	for _, binding := range p.storedBindings {
		if _, err := client.ClusterRoleBindings().Create(ctx, binding.DeepCopy(), metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("creating the default ClusterRoleBinding %q: %w", binding.Name, err)
		}
	}
	return nil
}
