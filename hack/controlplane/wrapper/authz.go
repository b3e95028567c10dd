// Authorisation: system:masters may do anything; everyone else what RBAC
// grants, decided from rbac.authorization.k8s.io/v1 Roles, ClusterRoles and
// their bindings as kube-apiserver's RBAC authoriser does. This server has no
// built-in RBAC API: those objects are custom resources of stand-in CRDs with
// the same group, version, kind and fields (../rbac-crds.yaml), read through
// client-go informers once the CRDs are established, plus the built-in part of
// the default policy (bootstrap.go).

package main

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	apihelpers "k8s.io/apiextensions-apiserver/pkg/apihelpers"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	crdlisters "k8s.io/apiextensions-apiserver/pkg/client/listers/apiextensions/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/apiserver/pkg/authentication/serviceaccount"
	"k8s.io/apiserver/pkg/authentication/user"
	"k8s.io/apiserver/pkg/authorization/authorizer"
	"k8s.io/apiserver/pkg/authorization/authorizerfactory"
	authorizerunion "k8s.io/apiserver/pkg/authorization/union"
	genericapiserver "k8s.io/apiserver/pkg/server"
	"k8s.io/apiserver/pkg/server/healthz"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	rbaclisters "k8s.io/client-go/listers/rbac/v1"
	restclient "k8s.io/client-go/rest"
	"k8s.io/component-helpers/auth/rbac/validation"
	"k8s.io/klog/v2"
)

// policyReadyCheck is the readyz check that passes once the RBAC objects are
// loaded (/readyz/rbac-policy); until then only system:masters may anything.
const policyReadyCheck = "rbac-policy"

// rbacCRDs are the stand-in CRDs the policy is read from.
var rbacCRDs = []string{
	"roles.rbac.authorization.k8s.io",
	"clusterroles.rbac.authorization.k8s.io",
	"rolebindings.rbac.authorization.k8s.io",
	"clusterrolebindings.rbac.authorization.k8s.io",
}

// newAuthorizer is the union kube-apiserver has (less Node and webhooks):
// members of system:masters are allowed anything, then RBAC decides.
func newAuthorizer(rbac *rbacAuthorizer) authorizer.Authorizer {
	return authorizerunion.New(authorizerfactory.NewPrivilegedGroups(user.SystemPrivilegedGroup), rbac)
}

// rbacAuthorizer answers from the informers' caches. It allows a request when
// one rule bound to the user covers it, in upstream's sense
// (validation.Covers: verbs, API groups, resources and subresources, resource
// names, non-resource URLs and their wildcards); otherwise it has no opinion,
// which the union turns into a 403.
type rbacAuthorizer struct {
	roles               rbaclisters.RoleLister
	clusterRoles        rbaclisters.ClusterRoleLister
	roleBindings        rbaclisters.RoleBindingLister
	clusterRoleBindings rbaclisters.ClusterRoleBindingLister
	defaults            *defaultPolicy // the built-in part of the default policy

	loaded atomic.Bool // the caches have synced and the defaults exist
}

// Authorize implements authorizer.Authorizer.
func (a *rbacAuthorizer) Authorize(_ context.Context, attrs authorizer.Attributes) (authorizer.Decision, string, error) {
	if !a.loaded.Load() {
		return authorizer.DecisionNoOpinion, "RBAC: the policy is not loaded yet", nil
	}
	wanted := []rbacv1.PolicyRule{requestedRule(attrs)}
	allowedBy := ""
	var problems []string
	a.visitRules(attrs.GetUser(), attrs.GetNamespace(), func(source string, rule *rbacv1.PolicyRule, err error) bool {
		if err != nil {
			problems = append(problems, err.Error())
			return true
		}
		if covered, _ := validation.Covers([]rbacv1.PolicyRule{*rule}, wanted); covered {
			allowedBy = source
			return false
		}
		return true
	})
	if allowedBy != "" {
		return authorizer.DecisionAllow, "RBAC: allowed by " + allowedBy, nil
	}
	if len(problems) > 0 {
		return authorizer.DecisionNoOpinion, "RBAC: " + strings.Join(problems, "; "), nil
	}
	return authorizer.DecisionNoOpinion, "", nil
}

// requestedRule is the request as the narrowest rule that would allow it: one
// verb on one resource (with its subresource, and its name if it has one) in
// one API group, or one verb on one non-resource URL.
func requestedRule(attrs authorizer.Attributes) rbacv1.PolicyRule {
	if !attrs.IsResourceRequest() {
		return rbacv1.PolicyRule{Verbs: []string{attrs.GetVerb()}, NonResourceURLs: []string{attrs.GetPath()}}
	}
	resource := attrs.GetResource()
	if sub := attrs.GetSubresource(); sub != "" {
		resource += "/" + sub
	}
	rule := rbacv1.PolicyRule{
		Verbs:     []string{attrs.GetVerb()},
		APIGroups: []string{attrs.GetAPIGroup()},
		Resources: []string{resource},
	}
	if name := attrs.GetName(); name != "" {
		rule.ResourceNames = []string{name}
	}
	return rule
}

// ruleVisitor sees each rule bound to a user with where it comes from, or an
// error (a binding naming a role that does not exist); false stops the visit.
type ruleVisitor func(source string, rule *rbacv1.PolicyRule, err error) bool

// visitRules walks the rules bound to u: those of ClusterRoleBindings, and, in
// a namespace, those of its RoleBindings (to a Role there or a ClusterRole).
func (a *rbacAuthorizer) visitRules(u user.Info, namespace string, visit ruleVisitor) {
	if u == nil {
		return
	}
	clusterBindings, err := a.clusterRoleBindings.List(labels.Everything())
	if err != nil {
		visit("", nil, err)
		return
	}
	for _, binding := range append(clusterBindings, a.defaults.builtInBindings...) {
		subject, ok := appliesTo(u, binding.Subjects, "")
		if !ok {
			continue
		}
		source := fmt.Sprintf("ClusterRoleBinding %q of %s %q to %s", binding.Name, binding.RoleRef.Kind, binding.RoleRef.Name, describeSubject(subject))
		if !a.visitRole(binding.RoleRef, "", source, visit) {
			return
		}
	}
	if namespace == "" {
		return
	}
	bindings, err := a.roleBindings.RoleBindings(namespace).List(labels.Everything())
	if err != nil {
		visit("", nil, err)
		return
	}
	for _, binding := range bindings {
		subject, ok := appliesTo(u, binding.Subjects, namespace)
		if !ok {
			continue
		}
		source := fmt.Sprintf("RoleBinding %q of %s %q to %s", binding.Name+"/"+namespace, binding.RoleRef.Kind, binding.RoleRef.Name, describeSubject(subject))
		if !a.visitRole(binding.RoleRef, namespace, source, visit) {
			return
		}
	}
}

// visitRole visits the rules of the role a binding refers to.
func (a *rbacAuthorizer) visitRole(ref rbacv1.RoleRef, namespace, source string, visit ruleVisitor) bool {
	var rules []rbacv1.PolicyRule
	switch ref.Kind {
	case "ClusterRole":
		role, err := a.clusterRoles.Get(ref.Name)
		if builtIn := a.defaults.builtInRoles[ref.Name]; apierrors.IsNotFound(err) && builtIn != nil {
			role, err = builtIn, nil
		}
		if err != nil {
			return visit(source, nil, err)
		}
		rules = role.Rules
	case "Role":
		if namespace == "" {
			return true // a ClusterRoleBinding cannot refer to a Role
		}
		role, err := a.roles.Roles(namespace).Get(ref.Name)
		if err != nil {
			return visit(source, nil, err)
		}
		rules = role.Rules
	default:
		return visit(source, nil, fmt.Errorf("unknown roleRef kind %q", ref.Kind))
	}
	for i := range rules {
		if !visit(source, &rules[i], nil) {
			return false
		}
	}
	return true
}

// appliesTo finds the subject of a binding that names u, as upstream does: a
// User by name, a Group by membership, a ServiceAccount by its user name
// system:serviceaccount:NS:NAME (NS defaulting to the binding's namespace).
func appliesTo(u user.Info, subjects []rbacv1.Subject, bindingNamespace string) (*rbacv1.Subject, bool) {
	for i := range subjects {
		subject := &subjects[i]
		switch subject.Kind {
		case rbacv1.UserKind:
			if u.GetName() == subject.Name {
				return subject, true
			}
		case rbacv1.GroupKind:
			for _, g := range u.GetGroups() {
				if g == subject.Name {
					return subject, true
				}
			}
		case rbacv1.ServiceAccountKind:
			namespace := subject.Namespace
			if namespace == "" {
				namespace = bindingNamespace
			}
			if namespace != "" && serviceaccount.MatchesUsername(namespace, subject.Name, u.GetName()) {
				return subject, true
			}
		}
	}
	return nil, false
}

func describeSubject(s *rbacv1.Subject) string {
	if s.Kind == rbacv1.ServiceAccountKind && s.Namespace != "" {
		return fmt.Sprintf("%s %q", s.Kind, s.Namespace+"/"+s.Name)
	}
	return fmt.Sprintf("%s %q", s.Kind, s.Name)
}

// RulesFor implements authorizer.RuleResolver, for SelfSubjectRulesReview
// (kubectl auth can-i --list): every rule bound to u in namespace.
func (a *rbacAuthorizer) RulesFor(_ context.Context, u user.Info, namespace string) ([]authorizer.ResourceRuleInfo, []authorizer.NonResourceRuleInfo, bool, error) {
	var resourceRules []authorizer.ResourceRuleInfo
	var nonResourceRules []authorizer.NonResourceRuleInfo
	var problems []string
	a.visitRules(u, namespace, func(_ string, rule *rbacv1.PolicyRule, err error) bool {
		if err != nil {
			problems = append(problems, err.Error())
			return true
		}
		if len(rule.Resources) > 0 {
			resourceRules = append(resourceRules, &authorizer.DefaultResourceRuleInfo{
				Verbs: rule.Verbs, APIGroups: rule.APIGroups, Resources: rule.Resources, ResourceNames: rule.ResourceNames,
			})
		}
		if len(rule.NonResourceURLs) > 0 {
			nonResourceRules = append(nonResourceRules, &authorizer.DefaultNonResourceRuleInfo{
				Verbs: rule.Verbs, NonResourceURLs: rule.NonResourceURLs,
			})
		}
		return true
	})
	if len(problems) > 0 {
		return resourceRules, nonResourceRules, true, fmt.Errorf("%s", strings.Join(problems, "; "))
	}
	return resourceRules, nonResourceRules, false, nil
}

// policy loads the RBAC objects: informers on the stand-in CRDs, started once
// those are established (the harness installs them after the server starts),
// the default policy, the authoriser reading from them and the ClusterRole
// aggregation controller.
type policy struct {
	factory    informers.SharedInformerFactory
	client     kubernetes.Interface
	defaults   *defaultPolicy
	authorizer *rbacAuthorizer
	aggregator *clusterRoleAggregator
}

// newPolicy makes the informers over a loopback client that speaks JSON (the
// CRDs standing in for RBAC serve no protobuf).
func newPolicy(loopback *restclient.Config, defaults *defaultPolicy) (*policy, error) {
	cfg := restclient.CopyConfig(loopback)
	cfg.ContentType = runtime.ContentTypeJSON
	cfg.AcceptContentTypes = runtime.ContentTypeJSON
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	factory := informers.NewSharedInformerFactory(client, 0)
	rbac := factory.Rbac().V1()
	p := &policy{
		factory:  factory,
		client:   client,
		defaults: defaults,
		authorizer: &rbacAuthorizer{
			roles:               rbac.Roles().Lister(),
			clusterRoles:        rbac.ClusterRoles().Lister(),
			roleBindings:        rbac.RoleBindings().Lister(),
			clusterRoleBindings: rbac.ClusterRoleBindings().Lister(),
			defaults:            defaults,
		},
	}
	p.aggregator = newClusterRoleAggregator(client.RbacV1(), rbac.ClusterRoles(), defaults)
	return p, nil
}

// install adds the post-start hook that loads the policy and the readyz check
// that says when it is loaded.
func (p *policy) install(server *genericapiserver.GenericAPIServer, crds crdlisters.CustomResourceDefinitionLister) error {
	server.AddPostStartHookOrDie("start-rbac-policy", func(ctx genericapiserver.PostStartHookContext) error {
		go p.run(ctx, crds)
		return nil
	})
	return server.AddReadyzChecks(healthz.NamedCheck(policyReadyCheck, func(*http.Request) error {
		if !p.authorizer.loaded.Load() {
			return fmt.Errorf("the RBAC objects are not loaded (CRDs %s established?)", strings.Join(rbacCRDs, ", "))
		}
		return nil
	}))
}

// run waits for the stand-in CRDs, starts the informers and the aggregation
// controller, creates the missing defaults, and marks the policy loaded once
// the caches have them.
func (p *policy) run(ctx context.Context, crds crdlisters.CustomResourceDefinitionLister) {
	err := wait.PollUntilContextCancel(ctx, 200*time.Millisecond, true, func(context.Context) (bool, error) {
		return allEstablished(crds, rbacCRDs), nil
	})
	if err != nil {
		return // the server is stopping
	}
	p.factory.Start(ctx.Done())
	for informer, synced := range p.factory.WaitForCacheSync(ctx.Done()) {
		if !synced {
			klog.Errorf("the RBAC cache of %v did not sync", informer)
			return
		}
	}
	go p.aggregator.run(ctx)
	err = wait.PollUntilContextCancel(ctx, time.Second, true, func(ctx context.Context) (bool, error) {
		if err := p.defaults.createMissing(ctx, p.client.RbacV1()); err != nil {
			klog.Errorf("the default RBAC policy: %v (will retry)", err)
			return false, nil
		}
		return true, nil
	})
	if err != nil {
		return
	}
	err = wait.PollUntilContextCancel(ctx, 50*time.Millisecond, true, func(context.Context) (bool, error) {
		return p.defaultsCached(), nil
	})
	if err != nil {
		return
	}
	p.authorizer.loaded.Store(true)
	klog.Infof("RBAC policy loaded: requests are authorised by it")
}

// defaultsCached: the informers have seen every stored default.
func (p *policy) defaultsCached() bool {
	for _, role := range p.defaults.storedRoles {
		if _, err := p.authorizer.clusterRoles.Get(role.Name); err != nil {
			return false
		}
	}
	for _, binding := range p.defaults.storedBindings {
		if _, err := p.authorizer.clusterRoleBindings.Get(binding.Name); err != nil {
			return false
		}
	}
	return true
}

func allEstablished(crds crdlisters.CustomResourceDefinitionLister, names []string) bool {
	for _, name := range names {
		crd, err := crds.Get(name)
		if err != nil || !apihelpers.IsCRDConditionTrue(crd, apiextensionsv1.Established) {
			return false
		}
	}
	return true
}

