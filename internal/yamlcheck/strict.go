package yamlcheck

import (
	"reflect"
	"strings"

	"gopkg.in/yaml.v3"
)

// Decode checks n strictly against the Go type of target, following its
// yaml struct tags: unknown keys, duplicate keys and values of the wrong type
// are findings with their lines. Only when there are none is n decoded into
// target. Types that implement yaml.Unmarshaler check themselves. Values
// that pass are decoded even when others do not, so that later checks can
// report every problem at once.
func Decode(n *yaml.Node, target any) []Finding {
	if n == nil {
		return nil
	}
	fs := check(n, reflect.TypeOf(target).Elem(), "")
	if err := n.Decode(target); err != nil && len(fs) == 0 {
		return []Finding{Errorf(n, "%v", err)}
	}
	return fs
}

var unmarshaler = reflect.TypeOf((*yaml.Unmarshaler)(nil)).Elem()

func check(n *yaml.Node, t reflect.Type, path string) []Finding {
	n = Resolve(n)
	if IsNull(n) {
		return nil
	}
	if reflect.PointerTo(t).Implements(unmarshaler) {
		v := reflect.New(t)
		if err := v.Interface().(yaml.Unmarshaler).UnmarshalYAML(n); err != nil {
			return []Finding{Errorf(n, "'%s': %v", path, err)}
		}
		return nil
	}
	switch t.Kind() {
	case reflect.Pointer:
		return check(n, t.Elem(), path)
	case reflect.Struct:
		if !IsMap(n) {
			return []Finding{Errorf(n, "'%s' must be a mapping, not %s", orTop(path), Describe(n))}
		}
		fields := map[string]reflect.StructField{}
		var known []string
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			name := strings.Split(f.Tag.Get("yaml"), ",")[0]
			if name == "" || name == "-" {
				continue
			}
			fields[name] = f
			known = append(known, join(path, name))
		}
		var fs []Finding
		seen := map[string]int{}
		for _, p := range Pairs(n) {
			key := join(path, p.Key)
			if first, dup := seen[p.Key]; dup {
				fs = append(fs, Errorf(p.KeyN, "key '%s' is given twice (first at line %d); keep one", key, first))
				continue
			}
			seen[p.Key] = p.KeyN.Line
			f, ok := fields[p.Key]
			if !ok {
				fs = append(fs, Errorf(p.KeyN, "%s", UnknownKey(key, known)))
				continue
			}
			fs = append(fs, check(p.Value, f.Type, key)...)
		}
		return fs
	case reflect.Map:
		if !IsMap(n) {
			return []Finding{Errorf(n, "'%s' must be a mapping, not %s", orTop(path), Describe(n))}
		}
		var fs []Finding
		for _, p := range Pairs(n) {
			fs = append(fs, check(p.Value, t.Elem(), join(path, p.Key))...)
		}
		return fs
	case reflect.Slice:
		if !IsSeq(n) {
			return []Finding{Errorf(n, "'%s' must be a list, not %s", orTop(path), Describe(n))}
		}
		var fs []Finding
		for _, it := range Items(n) {
			fs = append(fs, check(it, t.Elem(), path+"[]")...)
		}
		return fs
	case reflect.String:
		if !IsScalar(n) {
			return []Finding{Errorf(n, "'%s' must be a string, not %s", path, Describe(n))}
		}
	case reflect.Bool:
		if !IsBool(n) {
			return []Finding{Errorf(n, "'%s' must be true or false, not %s", path, Describe(n))}
		}
	case reflect.Int, reflect.Int64, reflect.Int32, reflect.Uint, reflect.Uint64:
		if !IsInt(n) {
			return []Finding{Errorf(n, "'%s' must be a whole number, not %s", path, Describe(n))}
		}
	case reflect.Float64, reflect.Float32:
		if !IsInt(n) && !(n.Kind == yaml.ScalarNode && n.Tag == "!!float") {
			return []Finding{Errorf(n, "'%s' must be a number, not %s", path, Describe(n))}
		}
	}
	return nil
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

func orTop(path string) string {
	if path == "" {
		return "the document"
	}
	return path
}
