package lab

import (
	"fmt"
	"strings"
)

// crossCheck checks what concerns several files at once: agent ids, device
// addresses, networks, static addresses and container names.
func (l *Lab) crossCheck() {
	dir := l.agentsDir()
	ids := map[string]*SUT{}
	ips := map[string]*SUT{}
	for _, s := range l.SUTs {
		if s.Agent.AgentID != "" {
			if s.Agent.AgentID != s.Name {
				l.d.warnf(s.Conf.Path, s.Agent.AgentIDLine, "agent_id %q differs from the file name; Testflinger, MQTT topics and the container use %q, so set agent_id: %s", s.Agent.AgentID, s.Name, s.Name)
			}
			if o := ids[s.Agent.AgentID]; o != nil {
				// Both are held: which one is right is not labsync's guess.
				l.d.errorf(s.Conf.Path, s.Agent.AgentIDLine, "agent_id %q is also used by %s; each agent needs its own agent_id", s.Agent.AgentID, o.Conf.Path)
				l.d.errorf(o.Conf.Path, o.Agent.AgentIDLine, "agent_id %q is also used by %s; each agent needs its own agent_id", s.Agent.AgentID, s.Conf.Path)
			} else {
				ids[s.Agent.AgentID] = s
			}
		}
		if dev := normalizeDevice(s.DeviceIP); dev != "" && s.Enabled() {
			if o := ips[dev]; o != nil {
				l.d.errorf(s.Connector.Path, lineOf(s.Connector.Path, "device_ip", l), "device_ip %s is also used by %s; two agents must never drive one device", s.DeviceIP, o.Connector.Path)
				l.d.errorf(o.Connector.Path, lineOf(o.Connector.Path, "device_ip", l), "device_ip %s is also used by %s; two agents must never drive one device", o.DeviceIP, s.Connector.Path)
			} else {
				ips[dev] = s
			}
		}
		if s.Override != nil && s.OverrideFile != nil {
			if img := s.Override.Image; img != "" && strings.ContainsAny(img, " \t") {
				l.d.errorf(s.OverrideFile.Path, lineOf(s.OverrideFile.Path, "image", l), "'image' %q is not an image reference", img)
			}
			for k := range s.Override.Env {
				if _, secret := l.Config.Agents.Secrets[k]; secret {
					l.d.errorf(s.OverrideFile.Path, lineOf(s.OverrideFile.Path, "env", l), "env %s is a secret in lab.yaml (agents.secrets); a value here would replace it, so remove it", k)
				} else if !validEnvName(k) {
					l.d.errorf(s.OverrideFile.Path, lineOf(s.OverrideFile.Path, "env", l), "env key %q is not a valid environment variable name", k)
				}
			}
			for net := range s.Override.Networks {
				if !l.hasNetwork(net) {
					l.d.errorf(s.OverrideFile.Path, lineOf(s.OverrideFile.Path, "networks", l), "network %q is not defined in the stack; define it under networks: in %s", net, l.stackFileOr())
				}
			}
		}
	}
	for net := range l.Config.Agents.Networks {
		if !l.hasNetwork(net) {
			l.d.errorf("lab.yaml", lineOf("lab.yaml", "agents.networks", l), "network %q is not defined in the stack; define it under networks: in %s", net, l.stackFileOr())
		}
	}
	l.checkAddresses()
	// Container names must not collide.
	names := map[string]string{}
	if l.Stack != nil {
		for _, svc := range l.Stack.Services {
			cn := l.serviceContainerName(svc)
			if prev, dup := names[cn]; dup {
				l.d.errorf(l.Stack.File, svc.Line, "container name %q is also used by %s", cn, prev)
			}
			names[cn] = fmt.Sprintf("service %s in %s", svc.Name, l.Stack.File)
		}
	}
	for _, s := range l.SUTs {
		cn := l.Config.ContainerPrefix + s.Name
		if prev, dup := names[cn]; dup {
			l.d.errorf(s.Conf.Path, 0, "SUT %q would get container name %q, already used by %s; rename the SUT or the service", s.Name, cn, prev)
		}
		names[cn] = fmt.Sprintf("SUT %s", s.Name)
	}
	_ = dir
}

// checkAddresses rejects a static address used twice on one network, and
// static addresses on networks without a subnet.
func (l *Lab) checkAddresses() {
	type owner struct {
		file, what string
		line       int
	}
	used := map[string]owner{}
	claim := func(net, ip, file string, line int, what string) {
		key := net + "/" + ip
		if prev, dup := used[key]; dup {
			l.d.errorf(file, line, "%s: address %s on network %s is also given to %s in %s", what, ip, net, prev.what, prev.file)
			if prev.file != l.stackFileOr() { // another agent: held too
				l.d.errorf(prev.file, prev.line, "%s: address %s on network %s is also given to %s in %s", prev.what, ip, net, what, file)
			}
			return
		}
		used[key] = owner{file, what, line}
		if l.Stack != nil {
			if sn := l.Stack.Networks[net]; sn != nil && len(sn.Config.Ipam.Config) == 0 && sn.Line > 0 {
				l.d.errorf(file, line, "%s: ipv4_address on network '%s' needs an ipam subnet on that network", what, net)
			}
		}
	}
	if l.Stack != nil {
		for _, svc := range l.Stack.Services {
			for _, key := range sortedKeys(svc.Config.Networks) {
				if nc := svc.Config.Networks[key]; nc != nil && nc.Ipv4Address != "" {
					claim(key, nc.Ipv4Address, l.Stack.File, svc.Line, "service '"+svc.Name+"'")
				}
			}
		}
	}
	for _, s := range l.SUTs {
		if s.Override == nil || s.OverrideFile == nil || !s.Enabled() {
			continue
		}
		for _, key := range sortedKeys(s.Override.Networks) {
			if ip := s.Override.Networks[key].IPv4Address; ip != "" {
				claim(key, ip, s.OverrideFile.Path, lineOf(s.OverrideFile.Path, "networks", l), "agent '"+s.Name+"'")
			}
		}
	}
}

func (l *Lab) stackFileOr() string {
	if l.Stack != nil {
		return l.Stack.File
	}
	return "the compose file"
}

func (l *Lab) hasNetwork(name string) bool {
	if name == "default" {
		return true
	}
	if l.Stack == nil {
		return false
	}
	_, ok := l.Stack.Networks[name]
	return ok
}
