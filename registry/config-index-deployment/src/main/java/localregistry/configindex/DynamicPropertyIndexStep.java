package localregistry.configindex;

import java.util.ArrayList;
import java.util.List;

import javax.inject.Singleton;

import org.eclipse.microprofile.config.inject.ConfigProperty;
import org.jboss.jandex.AnnotationInstance;
import org.jboss.jandex.AnnotationTarget;
import org.jboss.jandex.AnnotationValue;
import org.jboss.jandex.DotName;
import org.jboss.jandex.Type;

import apicurio.common.app.components.config.index.DynamicPropertiesInfoRecorder;
import io.apicurio.common.apps.config.Dynamic;
import io.apicurio.common.apps.config.DynamicConfigPropertyDef;
import io.apicurio.common.apps.config.DynamicConfigPropertyList;
import io.quarkus.arc.deployment.BeanDiscoveryFinishedBuildItem;
import io.quarkus.arc.deployment.SyntheticBeanBuildItem;
import io.quarkus.arc.processor.InjectionPointInfo;
import io.quarkus.deployment.annotations.BuildProducer;
import io.quarkus.deployment.annotations.BuildStep;
import io.quarkus.deployment.annotations.ExecutionTime;
import io.quarkus.deployment.annotations.Record;

/**
 * The registry lets an admin change some settings at run time (its "dynamic" properties): each is
 * a field annotated both {@code @ConfigProperty} and {@code @Dynamic}. At build time this step
 * lists those fields and publishes the list as a {@link DynamicConfigPropertyList} bean, which
 * the registry's admin API and config storage look up.
 */
public class DynamicPropertyIndexStep {

    private static final DotName DYNAMIC = DotName.createSimple(Dynamic.class.getName());
    private static final DotName CONFIG_PROPERTY = DotName.createSimple(ConfigProperty.class.getName());

    @BuildStep
    @Record(ExecutionTime.STATIC_INIT)
    void publishDynamicProperties(DynamicPropertiesInfoRecorder recorder,
                                  BeanDiscoveryFinishedBuildItem discovery,
                                  BuildProducer<SyntheticBeanBuildItem> beans) {
        List<DynamicConfigPropertyDef> properties = new ArrayList<>();
        for (InjectionPointInfo point : discovery.getInjectionPoints()) {
            AnnotationInstance dynamic = annotationOn(point.getTarget(), DYNAMIC);
            AnnotationInstance config = point.getRequiredQualifier(CONFIG_PROPERTY);
            if (dynamic == null || config == null) {
                continue;
            }
            DynamicConfigPropertyDef property = new DynamicConfigPropertyDef(
                    config.value("name").asString(), valueClass(point.getType()), text(config.value("defaultValue")));
            property.setLabel(text(dynamic.value("label")));
            property.setDescription(text(dynamic.value("description")));
            AnnotationValue requires = dynamic.value("requires");
            property.setRequires(requires == null ? new String[0] : requires.asStringArray());
            properties.add(property);
        }
        beans.produce(SyntheticBeanBuildItem.configure(DynamicConfigPropertyList.class)
                .scope(Singleton.class)
                .unremovable()
                .runtimeValue(recorder.initializePropertiesInfo(properties))
                .done());
    }

    private static AnnotationInstance annotationOn(AnnotationTarget target, DotName name) {
        if (target.kind() == AnnotationTarget.Kind.FIELD) {
            return target.asField().annotation(name);
        }
        return null;
    }

    /** The type a property's value converts to: T of an injected Supplier<T>, else the field's type. */
    private static Class<?> valueClass(Type injected) {
        Type value = injected;
        if (injected.kind() == Type.Kind.PARAMETERIZED_TYPE && !injected.asParameterizedType().arguments().isEmpty()) {
            value = injected.asParameterizedType().arguments().get(0);
        }
        switch (value.name().toString()) {
            case "boolean": return Boolean.class;
            case "int": return Integer.class;
            case "long": return Long.class;
            default:
                try {
                    return Class.forName(value.name().toString(), false,
                            Thread.currentThread().getContextClassLoader());
                } catch (ClassNotFoundException e) {
                    return String.class;
                }
        }
    }

    private static String text(AnnotationValue value) {
        return value == null ? null : value.asString();
    }
}
